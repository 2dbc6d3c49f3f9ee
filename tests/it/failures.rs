//! Failure honesty (real binary, real redis-server): a write Redis refuses
//! is never answered as if the cluster had it.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::json;

use crate::support::{tempdir, BinaryNode, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_redis_refuses_gets_503_is_kept_and_lands_when_redis_takes_it() {
    let redis = RedisServer::start();
    let dir = tempdir("refused");
    let extra = format!("redis_url: \"{}\"\ntopic_ttl: 1h", redis.url());
    let a = BinaryNode::start(&dir, "a", &extra).await;
    let b = BinaryNode::start(&dir, "b", &extra).await;
    for node in [&a, &b] {
        node.wait_status(Duration::from_secs(10), "cluster", |s| {
            s["mode"] == "cluster" && s["cluster_nodes"] == 2
        })
        .await;
    }
    // Redis full, and refusing writes (as a managed Redis at its memory cap).
    let mut admin = redis.client().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut refused = 0;
    for i in 0..50 {
        let (code, _) = a
            .post(
                "/internal/register",
                &json!({"topic": format!("full-{i}"), "meta": {"require_token": false}}),
            )
            .await;
        if code == 503 {
            refused += 1;
        }
    }
    assert_eq!(refused, 50, "every refused registration is answered 503");
    let status = a.status("").await;
    assert_eq!(status["pending_registry_changes"], 50, "{status}");
    assert_eq!(
        status["mode"], "cluster",
        "Redis answers: the node is in the cluster"
    );
    // A serves the topic itself; B does not know it yet: that is why A said 503.
    assert_eq!(a.publish("full-0", &json!(1)).await, 200);
    assert_eq!(b.publish("full-0", &json!(1)).await, 404);
    let log = a.process.output();
    let lines = log.matches("did not take a change").count();
    assert!(
        (1..=2).contains(&lines),
        "50 refusals, rate-limited to {lines} log lines:\n{log}"
    );

    // Room again: the heartbeat writes every pending change, and B has them.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = a.status("").await;
        if status.get("pending_registry_changes").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending changes still not written: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored: Vec<String> = admin.keys("wavelog:topic:full-*").await.unwrap();
    assert_eq!(stored.len(), 50);
    assert_eq!(b.publish("full-49", &json!(2)).await, 200);
}
