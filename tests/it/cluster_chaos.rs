//! Cluster mode against a real redis-server: fan-out across nodes, joining
//! late, surviving a Redis crash and a hung Redis, cross-node unregister, and
//! the node roster.

use std::time::{Duration, Instant};

use crate::support::{RedisServer, TestNode};
use redis::AsyncCommands;
use serde_json::json;

async fn cluster_node(redis: &RedisServer) -> TestNode {
    TestNode::start(&format!("redis_url: \"{}\"\ntopic_ttl: 1h", redis.url())).await
}

/// Every frame until a quiet half second: the push sequence numbers, and
/// how many `resync` notices came with them.
pub(crate) async fn drain(socket: &mut crate::support::Ws) -> (Vec<u64>, usize) {
    let (mut seqs, mut resyncs) = (Vec::new(), 0);
    while let Some(frame) = socket.recv_json(Duration::from_millis(500)).await {
        match frame["type"].as_str() {
            Some("push") => seqs.push(frame["payload"]["seq"].as_u64().unwrap()),
            Some("resync") => resyncs += 1,
            _ => panic!("unexpected frame {frame}"),
        }
    }
    (seqs, resyncs)
}

async fn wait_cluster(node: &TestNode, nodes: i64) {
    node.wait_status(Duration::from_secs(10), "joins the cluster", |s| {
        s["mode"] == "cluster" && s["cluster_nodes"] == nodes
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_reaches_every_node_exactly_once_in_order() {
    let redis = RedisServer::start();
    let nodes = [
        cluster_node(&redis).await,
        cluster_node(&redis).await,
        cluster_node(&redis).await,
    ];
    for node in &nodes {
        wait_cluster(node, 3).await;
    }
    nodes[0].register("fanout", true).await;
    let mut sockets = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        sockets.push(node.socket("fanout", i as i64 + 1).await);
    }
    // one publisher at a time, rotating over the nodes
    for seq in 0..60 {
        let code = nodes[seq % 3].publish("fanout", &json!({"seq": seq})).await;
        assert_eq!(code, 200, "publish {seq}");
    }
    for (i, socket) in sockets.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Some(frame) = socket.recv_json(Duration::from_secs(3)).await {
            got.push(frame["payload"]["seq"].as_u64().unwrap());
            if got.len() == 60 {
                break;
            }
        }
        // Frames from different nodes may interleave differently, but each
        // publish arrives exactly once.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 60, "socket on node {i} got {got:?}");
        socket
            .expect_silence(Duration::from_millis(300), "no duplicates")
            .await;
    }
    // With a single publishing node, order is kept on every node.
    for seq in 0..50 {
        assert_eq!(nodes[1].publish("fanout", &json!({"n": seq})).await, 200);
    }
    for socket in &mut sockets {
        for seq in 0..50 {
            socket
                .expect_push(&json!({"n": seq}), "in publish order")
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_started_without_redis_joins_when_it_appears() {
    let mut redis = RedisServer::reserved();
    let node = cluster_node(&redis).await;
    let status = node.status("").await;
    assert_eq!(status["mode"], "degraded");
    assert_eq!(status["cluster_nodes"], -1);
    node.register("early", true).await;
    let mut socket = node.socket("early", 1).await;
    assert_eq!(node.publish("early", &json!("alone")).await, 200);
    socket
        .expect_push(&json!("alone"), "works alone while Redis is down")
        .await;

    redis.restart();
    let started = Instant::now();
    wait_cluster(&node, 1).await;
    eprintln!("joined {:?} after Redis came up", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "joins within 5 s"
    );
    let mut conn = redis.client().await;
    let stored: Option<String> = conn.get("wavelog:topic:early").await.unwrap();
    assert_eq!(stored.as_deref(), Some(r#"{"require_token":true}"#));
    let ttl: i64 = conn.ttl("wavelog:topic:early").await.unwrap();
    assert!((3500..=3600).contains(&ttl), "remaining TTL kept: {ttl}");
    // The socket was here while the node was not subscribed: it is told so.
    assert_eq!(
        socket.recv_json(Duration::from_secs(5)).await,
        Some(json!({"type": "resync", "reason": "cluster_rejoin"}))
    );
    assert_eq!(node.publish("early", &json!("joined")).await, 200);
    socket
        .expect_push(&json!("joined"), "still delivered after joining")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_under_publish_load_loses_nothing_local_and_recovers() {
    let mut redis = RedisServer::start();
    let a = cluster_node(&redis).await;
    let b = cluster_node(&redis).await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    a.register("stream", true).await;
    let mut on_a = a.socket("stream", 1).await;
    let mut on_b = b.socket("stream", 2).await;

    let mut sent = 0u64;
    let mut outage_registered = false;
    let mut killed_at = None;
    let mut restarted_at = None;
    let started = Instant::now();
    // 20 publishes per second for 6 s; Redis dies at 1 s and returns at 3 s.
    while started.elapsed() < Duration::from_secs(6) {
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(1) {
            redis.kill9();
            killed_at = Some(sent);
        }
        if restarted_at.is_none() && started.elapsed() >= Duration::from_secs(3) {
            redis.restart();
            restarted_at = Some(sent);
        }
        if killed_at.is_some() && restarted_at.is_none() && !outage_registered {
            a.register("during-outage", false).await;
            outage_registered = true;
        }
        let code = a.publish("stream", &json!({"seq": sent})).await;
        assert_eq!(code, 200, "publish {sent} answered {code}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Local delivery never stopped: every publish reached A's socket, in
    // order; the rejoin added one resync notice (A's subscription was lost).
    let (local, local_resyncs) = drain(&mut on_a).await;
    assert_eq!(local, (0..sent).collect::<Vec<_>>(), "node A's own socket");
    assert_eq!(local_resyncs, 1, "one resync notice on A after its rejoin");
    // Remote delivery resumed: B got the publishes before the crash and the
    // ones after it rejoined; the gap is reported.
    let (remote, remote_resyncs) = drain(&mut on_b).await;
    assert_eq!(
        remote_resyncs, 1,
        "B's socket is told it may have missed events"
    );
    let last = *remote.last().expect("node B received publishes");
    assert_eq!(
        last,
        sent - 1,
        "remote delivery resumed by the end: got {remote:?}"
    );
    assert!(
        remote.windows(2).all(|w| w[0] < w[1]),
        "remote frames in order"
    );
    let missed = sent - remote.len() as u64;
    let restart_seq = restarted_at.unwrap();
    let resumed_seq = remote
        .iter()
        .copied()
        .find(|seq| *seq >= killed_at.unwrap())
        .unwrap();
    eprintln!(
        "remote delivery missed {missed} of {sent} publishes (50 ms apart); Redis was down from #{} to #{restart_seq}, \
         remote delivery resumed at #{resumed_seq} (~{} ms after the restart)",
        killed_at.unwrap(),
        (resumed_seq.saturating_sub(restart_seq)) * 50
    );
    assert!(
        resumed_seq <= restart_seq + 100,
        "remote delivery resumed within 5 s of the restart"
    );
    // The registration made during the outage is in Redis again.
    a.wait_status(Duration::from_secs(5), "rejoined", |s| {
        s["mode"] == "cluster"
    })
    .await;
    let mut conn = redis.client().await;
    let stored: Option<String> = conn.get("wavelog:topic:during-outage").await.unwrap();
    assert_eq!(stored.as_deref(), Some(r#"{"require_token":false}"#));
    let stream: Option<String> = conn.get("wavelog:topic:stream").await.unwrap();
    assert!(
        stream.is_some(),
        "topics registered before the crash are written back too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_never_hangs_a_publish_or_handshake_for_long() {
    let redis = RedisServer::start();
    let node = cluster_node(&redis).await;
    wait_cluster(&node, 1).await;
    node.register("hang", false).await;
    let mut socket = node.socket("hang", 0).await;
    redis.pause(true);
    let started = Instant::now();
    assert_eq!(node.publish("hang", &json!(1)).await, 200);
    let first = started.elapsed();
    socket
        .expect_push(&json!(1), "delivered locally while Redis hangs")
        .await;
    let started = Instant::now();
    let _second = node.socket("hang", 0).await;
    let handshake = started.elapsed();
    redis.pause(false);
    eprintln!("publish took {first:?}, next handshake {handshake:?} with Redis hung");
    // redis.command_timeout is 1 s; allow scheduling slack on a busy machine.
    assert!(first < Duration::from_secs(3), "publish took {first:?}");
    assert!(
        handshake < Duration::from_secs(3),
        "handshake took {handshake:?}"
    );
    node.wait_status(Duration::from_secs(10), "recovers after the hang", |s| {
        s["mode"] == "cluster"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_on_one_node_is_honoured_by_another_within_a_second() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis).await;
    let b = cluster_node(&redis).await;
    wait_cluster(&a, 2).await;
    a.register("gone", true).await;
    assert_eq!(b.publish("gone", &json!(1)).await, 200);
    let (code, _) = a
        .post("/internal/unregister", &json!({"topic": "gone"}))
        .await;
    assert_eq!(code, 200);
    let started = Instant::now();
    loop {
        if b.publish("gone", &json!(2)).await == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node B still accepts after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_lists_every_node_and_a_node_leaves_it_on_shutdown() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis).await;
    let b = cluster_node(&redis).await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    // Wavelog 1.x reads the whole cluster from one node's plain status.
    let status = a.status("").await;
    let ids: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&a.node.node_id()) && ids.contains(&b.node.node_id()),
        "{status}"
    );
    for entry in status["nodes"].as_array().unwrap() {
        assert_eq!(entry["alive"], true);
        for key in ["name", "version", "started_at", "seen_at", "uptime"] {
            assert!(entry[key].is_string(), "{key} in {entry}");
        }
    }
    let b_id = b.node.node_id().to_string();
    b.stop().await;
    let mut conn = redis.client().await;
    let still: bool = conn.hexists("wavelog:nodes", &b_id).await.unwrap();
    assert!(!still, "a stopped node removes its roster entry");
    a.wait_status(Duration::from_secs(5), "one node left", |s| {
        s["cluster_nodes"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_envelopes_are_delivered_and_malformed_ones_skipped() {
    let redis = RedisServer::start();
    let node = cluster_node(&redis).await;
    wait_cluster(&node, 1).await;
    node.register("foreign", true).await;
    let mut socket = node.socket("foreign", 1).await;
    let mut conn = redis.client().await;
    for junk in ["not json", "[]", "{}", r#"{"topic":"foreign"}"#] {
        let _: i64 = conn.publish("wavelog:events", junk).await.unwrap();
    }
    let envelope =
        json!({"origin_id": "00112233445566ff", "topic": "foreign", "payload": {"from": "go"}});
    let _: i64 = conn
        .publish("wavelog:events", envelope.to_string())
        .await
        .unwrap();
    socket
        .expect_push(&json!({"from": "go"}), "envelope from another node")
        .await;
    let own = json!({"origin_id": node.node.node_id(), "topic": "foreign", "payload": "echo"});
    let _: i64 = conn
        .publish("wavelog:events", own.to_string())
        .await
        .unwrap();
    socket
        .expect_silence(Duration::from_millis(500), "own origin_id is skipped")
        .await;
    let metrics = crate::support::http(
        node.internal,
        "GET",
        "/metrics",
        None,
        Some(crate::support::SECRET),
    )
    .await
    .1;
    assert!(
        metrics.contains("skywave_envelopes_malformed_total 4"),
        "{metrics}"
    );
}
