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
    crate::support::admin(
        &mut admin,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await;
    crate::support::admin(&mut admin, &["CONFIG", "SET", "maxmemory", "1"]).await;
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
    crate::support::admin(&mut admin, &["CONFIG", "SET", "maxmemory", "0"]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_a_node_still_knows_the_topics_registered_elsewhere() {
    let mut redis = RedisServer::start();
    let url = format!("redis_url: \"{}\"\ntopic_ttl: 1h", redis.url());
    let a = crate::support::TestNode::start(&url).await;
    let b = crate::support::TestNode::start(&url).await;
    for node in [&a, &b] {
        node.wait_status(Duration::from_secs(10), "cluster", |s| {
            s["cluster_nodes"] == 2
        })
        .await;
    }
    a.register("copied-at-join", true).await;
    // A blip makes both rejoin; a join copies the cluster's registry.
    let mut admin = redis.client().await;
    crate::support::admin(&mut admin, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    drop(admin);
    b.wait_status(Duration::from_secs(10), "B rejoined", |s| {
        s["mode"] == "cluster"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = b.get("/metrics", None).await;
        if metrics.contains("skywave_redis_joins_total 2") {
            break;
        }
        assert!(Instant::now() < deadline, "B rejoins: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Registered after the copy, but looked up by B (a browser connects).
    a.register("looked-up", true).await;
    drop(b.socket("looked-up", 3).await);

    redis.kill9();
    b.wait_status(Duration::from_secs(10), "B degraded", |s| {
        s["mode"] == "degraded"
    })
    .await;
    for topic in ["copied-at-join", "looked-up"] {
        assert_eq!(
            b.publish(topic, &json!("outage")).await,
            200,
            "{topic} on B"
        );
        let mut socket = b.socket(topic, 4).await;
        assert_eq!(b.publish(topic, &json!("still")).await, 200);
        socket
            .expect_push(&json!("still"), "served through the outage")
            .await;
    }
    assert_eq!(b.publish("never-registered", &json!(0)).await, 404);
}

/// Reads one HTTP response (head and Content-Length body) off a keep-alive
/// connection; `None` if the connection was closed or reset instead.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&raw[..end + 4 + length]).to_string());
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_requests_in_flight_are_answered_and_late_ones_get_503_not_a_reset() {
    use tokio::io::AsyncWriteExt;
    let mut redis = RedisServer::start();
    let dir = tempdir("shutdown-api");
    let node = BinaryNode::start(
        &dir,
        "a",
        &format!(
            "redis_url: \"{}\"\nredis:\n  command_timeout: 1s",
            redis.url()
        ),
    )
    .await;
    node.wait_status(Duration::from_secs(10), "cluster", |s| {
        s["mode"] == "cluster"
    })
    .await;
    node.register("late", false).await;
    let secret = crate::support::SECRET;
    let publish = |n: u32| {
        let body = format!("{{\"topic\":\"late\",\"payload\":{n}}}");
        format!(
            "POST /internal/publish HTTP/1.1\r\nHost: x\r\nX-Worker-Secret: {secret}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // A keep-alive connection that a publisher holds open.
    let mut held = tokio::net::TcpStream::connect(node.internal).await.unwrap();
    held.write_all(publish(1).as_bytes()).await.unwrap();
    let first = read_response(&mut held).await.expect("an answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    // A status call in flight when the signal comes (Redis hangs, so its
    // count waits for the command timeout): it is still answered.
    redis.pause(true);
    let internal = node.internal;
    let in_flight = tokio::spawn(async move {
        crate::support::http(internal, "GET", "/internal/status", None, Some(secret)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.process.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A publish arriving on the open connection just after the signal.
    held.write_all(publish(2).as_bytes()).await.unwrap();
    let late = read_response(&mut held).await;
    redis.pause(false);
    let (code, body) = in_flight.await.unwrap();
    assert_eq!(code, 200, "the request in flight is answered: {body}");
    let late = late.expect("an answer on the open connection, not a reset");
    assert!(late.starts_with("HTTP/1.1 503"), "{late}");
    assert!(late.contains("shutting down"), "{late}");
    let mut process = node.process;
    assert!(
        process.wait_exit(Duration::from_secs(10)).await.is_some(),
        "exits within 10 s"
    );
    redis.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_cap_follows_the_fd_limit_and_the_internal_api_keeps_answering() {
    let dir = tempdir("fdlimit");
    let (ws, internal) = crate::support::two_free_ports();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "ws_bind: 127.0.0.1\nws_port: {ws}\ninternal_port: {internal}\n\
             worker_secret: \"{}\"\n",
            crate::support::SECRET
        ),
    )
    .unwrap();
    // Soft 300, hard 600: skywave raises the soft limit to 600 itself.
    let binary = env!("CARGO_BIN_EXE_skywave");
    let mut sh = std::process::Command::new("sh");
    sh.current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .args([
            "-c",
            &format!("ulimit -Sn 300 && ulimit -Hn 600 && exec {binary}"),
        ]);
    let mut process = crate::support::Process::spawn(sh, &dir, "skywave");
    process.expect_listening(&[internal]).await;
    let node = crate::support::NodeClient {
        ws: format!("127.0.0.1:{ws}").parse().unwrap(),
        internal: format!("127.0.0.1:{internal}").parse().unwrap(),
    };
    let (_, metrics) = node.get("/metrics", None).await;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(
        gauge("skywave_fd_limit"),
        600,
        "the soft limit is raised to the hard one"
    );
    let cap = gauge("skywave_max_sockets");
    assert_eq!(cap, 600 - skywave::descriptors::RESERVED);

    node.register("crowd", false).await;
    let (mut upgraded, mut refused) = (0u64, 0u64);
    let mut held = Vec::new();
    for _ in 0..cap + 40 {
        let (code, stream) = crate::support::raw_upgrade(node.ws, "crowd").await;
        match code {
            101 => upgraded += 1,
            503 => refused += 1,
            other => panic!("upgrade answered {other}"),
        }
        held.push(stream); // never authenticates
    }
    assert_eq!(
        (upgraded, refused),
        (cap, 40),
        "503 past the cap, before the fds run out"
    );
    let started = Instant::now();
    let status = node.status("").await;
    assert!(status["status"] == "ok" && started.elapsed() < Duration::from_secs(1));
    assert!(
        !process.output().contains("accept failed"),
        "accept never ran out of descriptors"
    );
}
