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

/// Sends a raw request head (and `body`, then stalls) on a fresh connection;
/// returns the status line and how long the answer took.
async fn raw_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_faults_are_answered_as_client_faults() {
    let node = crate::support::TestNode::start("limits:\n  request_timeout: 2s").await;
    let secret = crate::support::SECRET;
    let head = |length: &str| {
        format!(
            "POST /internal/publish HTTP/1.1\r\nHost: x\r\nX-Worker-Secret: {secret}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // An absurd declared length: refused at once, before any byte of body.
    for length in ["1000000000000000000", "2097152"] {
        let (status, took) = raw_request(node.internal, &head(length), b"").await;
        assert!(
            status.contains(" 413 "),
            "Content-Length {length}: {status}"
        );
        assert!(
            took < Duration::from_secs(1),
            "at once, not after a timeout: {took:?}"
        );
    }
    // A body that stops arriving: 408 (the client's fault), well before the
    // request deadline's 503.
    let (status, took) = raw_request(node.internal, &head("100"), b"{\"topic\":").await;
    assert!(status.contains(" 408 "), "{status}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let internal = node.internal;
    let post = |body: &'static [u8]| async move {
        crate::support::http(
            internal,
            "POST",
            "/internal/register",
            Some(body),
            Some(secret),
        )
        .await
    };
    let (code, text) = post(b"{\"topic\":\"\xff\xfe\"}").await;
    assert_eq!((code, text.trim()), (400, "bad request: body is not UTF-8"));
    let (code, text) = post(br#"{"topic":"a","topic":"b"}"#).await;
    assert_eq!(
        (code, text.trim()),
        (400, "bad request: duplicate key in the JSON object")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lists_are_paged_not_unbounded() {
    let node = crate::support::TestNode::start("").await;
    let total = skywave::node::TOPIC_LIST_MAX + 500;
    for i in 0..total {
        node.node
            .registry()
            .register(&format!("t{i:06}"), Default::default())
            .await
            .unwrap();
    }
    let first = node.status("?topics=1").await;
    let list = first["topic_list"].as_array().unwrap();
    assert_eq!(list.len(), skywave::node::TOPIC_LIST_MAX);
    assert_eq!(first["topic_list_truncated"], true);
    assert_eq!(
        first["registered_topics"],
        total + 1,
        "the count is never cut"
    );
    let last = list.last().unwrap().as_str().unwrap().to_string();
    let second = node.status(&format!("?topics=1&after={last}")).await;
    let rest = second["topic_list"].as_array().unwrap();
    // The rest of the t-topics, and worker.status (sorted after them).
    assert_eq!(rest.len(), 501, "{:?}", rest.last());
    assert!(second.get("topic_list_truncated").is_none());
}
