//! The health model against a real redis-server: a slow Redis is not a dead
//! one, a huge registry degrades nobody, and a rejoin writes back only what
//! Redis did not take (a topic unregistered elsewhere stays unregistered),
//! except after Redis restarted empty.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;

use crate::support::{NodeClient, RedisServer, TestNode};

async fn node(redis: &RedisServer, extra: &str) -> TestNode {
    TestNode::start(&format!(
        "redis_url: \"{}\"\ntopic_ttl: 1h\n{extra}",
        redis.url()
    ))
    .await
}

async fn wait_cluster(node: &NodeClient, nodes: i64) {
    node.wait_status(Duration::from_secs(10), "in the cluster", |s| {
        s["mode"] == "cluster" && s["cluster_nodes"] == nodes
    })
    .await;
}

/// One sample of the node's `/metrics` (no secret needed).
async fn metric(node: &NodeClient, name: &str) -> u64 {
    let (code, text) = node.get("/metrics", None).await;
    assert_eq!(code, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn exists(redis: &RedisServer, topic: &str) -> bool {
    let mut conn = redis.client().await;
    conn.exists(format!("wavelog:topic:{topic}")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_shorter_than_the_command_timeout_changes_nothing() {
    let redis = RedisServer::start();
    let a = node(&redis, "redis:\n  command_timeout: 1s").await;
    let b = node(&redis, "redis:\n  command_timeout: 1s").await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    a.register("stall", true).await;
    let mut on_b = b.socket("stall", 1).await;

    for seq in 0..40 {
        if seq == 10 {
            // 400 ms, less than the 1 s command timeout.
            redis.stall_for(Duration::from_millis(400));
        }
        assert_eq!(a.publish("stall", &json!({"seq": seq})).await, 200);
        for n in [&a, &b] {
            assert_eq!(n.node.mode().as_str(), "cluster", "mode during the stall");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for seq in 0..40 {
        on_b.expect_push(&json!({"seq": seq}), "every publish crosses, in order")
            .await;
    }
    for n in [&a, &b] {
        assert_eq!(
            metric(n, "skywave_redis_subscriber_restarts_total").await,
            0
        );
        assert_eq!(metric(n, "skywave_redis_joins_total").await, 1);
        assert_eq!(metric(n, "skywave_redis_command_failures_total").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_the_command_timeout_fails_commands_not_the_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "redis:\n  command_timeout: 300ms").await;
    let b = node(&redis, "redis:\n  command_timeout: 300ms").await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    a.register("slow", true).await;
    let mut on_b = b.socket("slow", 1).await;
    redis.pause(true);
    // Lookups time out and are answered from A's own registry; the
    // envelopes wait in A's outbox.
    for seq in 0..5 {
        assert_eq!(a.publish("slow", &json!({"seq": seq})).await, 200);
    }
    assert_eq!(
        a.node.mode().as_str(),
        "cluster",
        "a slow command is not a dead Redis"
    );
    redis.pause(false);
    for seq in 0..5 {
        on_b.expect_push(&json!({"seq": seq}), "retried in order once Redis answers")
            .await;
    }
    assert!(metric(&a, "skywave_redis_command_failures_total").await >= 1);
    assert_eq!(metric(&a, "skywave_envelopes_dropped_total").await, 0);
    assert_eq!(
        metric(&a, "skywave_redis_subscriber_restarts_total").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_registry_degrades_no_node() {
    let redis = RedisServer::start();
    {
        let mut conn = redis.client().await;
        for chunk in 0..20 {
            let mut pipe = redis::pipe();
            for i in 0..5_000 {
                pipe.cmd("SET")
                    .arg(format!("wavelog:topic:bulk-{chunk}-{i}"))
                    .arg(r#"{"require_token":true}"#)
                    .arg("EX")
                    .arg(3600)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    }
    let a = node(&redis, "").await;
    let b = node(&redis, "").await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut calls = 0;
    while Instant::now() < deadline {
        let (sa, sb, ma) = tokio::join!(a.status(""), b.status(""), a.get("/metrics", None));
        assert_eq!(ma.0, 200);
        for s in [&sa, &sb] {
            assert_eq!(s["mode"], "cluster", "{s}");
            assert!(s["registered_topics"].as_u64().unwrap() >= 100_000, "{s}");
        }
        calls += 1;
    }
    eprintln!("{calls} rounds of two status calls and a scrape over 100k topics in 3 s");
    a.register("after-bulk", true).await;
    let mut on_b = b.socket("after-bulk", 1).await;
    assert_eq!(a.publish("after-bulk", &json!("still")).await, 200);
    on_b.expect_push(&json!("still"), "cross-node after the scans")
        .await;
    for n in [&a, &b] {
        assert_eq!(
            metric(n, "skywave_redis_subscriber_restarts_total").await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_writes_back_only_what_redis_did_not_take() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "").await;
    wait_cluster(&a, 1).await;
    assert!(
        exists(&redis, "worker.status").await,
        "the status topic is in Redis as soon as the node is in the cluster"
    );
    let mut admin = redis.client().await;

    // 1. Registered through A, then unregistered by another node (here the
    // test, as a Go node would): a blip of A's subscription must not bring
    // it back.
    a.register("gone-elsewhere", true).await;
    a.register("kept", true).await;
    let () = admin.del("wavelog:topic:gone-elsewhere").await.unwrap();
    crate::support::admin(&mut admin, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "skywave_redis_joins_total").await < 2 {
        assert!(Instant::now() < deadline, "A rejoins after the blip");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_cluster(&a, 1).await;
    assert!(
        !exists(&redis, "gone-elsewhere").await,
        "an unregister elsewhere is honoured"
    );
    assert!(exists(&redis, "kept").await);

    // 2. Changes made while A is degraded (Redis refuses A's new subscriber
    // connection) are kept and written back in order when it rejoins.
    crate::support::admin(
        &mut admin,
        &["CONFIG", "SET", "requirepass", "closed-for-now"],
    )
    .await;
    crate::support::admin(&mut admin, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    a.wait_status(Duration::from_secs(10), "degraded", |s| {
        s["mode"] == "degraded" && s["redis_error"].is_string()
    })
    .await;
    a.register("while-away", false).await;
    a.unregister("kept").await;
    assert_eq!(metric(&a, "skywave_registry_pending_changes").await, 2);
    crate::support::admin(&mut admin, &["CONFIG", "SET", "requirepass", ""]).await;
    wait_cluster(&a, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "skywave_registry_pending_changes").await > 0 {
        assert!(Instant::now() < deadline, "pending changes written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exists(&redis, "while-away").await);
    assert!(
        !exists(&redis, "kept").await,
        "an unregister made while away is replayed"
    );
    assert!(!exists(&redis, "gone-elsewhere").await);

    // 3. Redis restarted empty (a new run_id): A's whole registry is written
    // back, where keys are missing.
    drop(admin);
    redis.kill9();
    redis.restart();
    wait_cluster(&a, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exists(&redis, "while-away").await {
        assert!(
            Instant::now() < deadline,
            "the mirror is written back after a restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!exists(&redis, "kept").await);
}
