//! Single-node behaviour beyond the conformance suite: slow clients, limits,
//! TTL freeing memory, graceful shutdown, and the command line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{http, tempdir, wait_port, Process, TestNode, Ws, SECRET};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_socket_loses_oldest_frames_gets_lagged_and_never_slows_others() {
    let node = TestNode::start("limits:\n  socket_queue: 4").await;
    node.register("busy", true).await;
    let mut fast = node.socket("busy", 1).await;
    let mut slow = node.socket("busy", 2).await;
    // The slow socket reads only between bursts of 100 of the 3,000 frames
    // of 20 KiB: during each, its kernel buffers fill, then its outbox (4
    // frames) drops the oldest. It keeps taking bytes, so it is slow, not
    // stuck (a socket that takes nothing for 2 s is closed: slow_sockets.rs).
    let blob = "x".repeat(20 * 1024);
    let total = 3_000;
    let mut fast_seen = 0;
    let mut lagged = 0;
    let mut last_seq = None;
    let mut take = |frame: serde_json::Value| match frame["type"].as_str() {
        Some("lagged") => lagged += frame["missed"].as_u64().unwrap(),
        Some("push") => last_seq = frame["payload"]["seq"].as_u64(),
        other => panic!("unexpected frame type {other:?}"),
    };
    for seq in 0..total {
        if seq % 100 == 99 {
            while let Some(frame) = slow.recv_json(Duration::from_millis(50)).await {
                take(frame);
            }
        }
        assert_eq!(
            node.publish("busy", &json!({"seq": seq, "blob": blob}))
                .await,
            200
        );
        // The fast socket keeps up, in order.
        let frame = fast
            .recv_json(Duration::from_secs(5))
            .await
            .expect("fast socket keeps receiving");
        assert_eq!(frame["payload"]["seq"], seq);
        fast_seen += 1;
    }
    assert_eq!(fast_seen, total);
    while let Some(frame) = slow.recv_json(Duration::from_secs(2)).await {
        take(frame);
    }
    assert!(lagged > 0, "the slow socket was told it lagged");
    assert_eq!(
        last_seq,
        Some(total as u64 - 1),
        "the newest frame is never dropped"
    );
    let metrics = http(node.internal, "GET", "/metrics", None, Some(SECRET))
        .await
        .1;
    assert!(
        !metrics.contains("skywave_dropped_frames_total 0\n"),
        "drops are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_answer_429_and_node_limit_503() {
    let node = TestNode::start("limits:\n  max_sockets_per_ip: 2").await;
    node.register("lim", false).await;
    let _a = node.socket("lim", 0).await;
    let _b = node.socket("lim", 0).await;
    assert_eq!(
        handshake_status(node.ws, "lim").await,
        429,
        "third socket from one address"
    );
    drop(_a);
    node.wait_status(Duration::from_secs(5), "socket released", |s| {
        s["connected_sockets"] == 1
    })
    .await;
    let _c = node.socket("lim", 0).await;

    let full = TestNode::start("limits:\n  max_sockets: 2").await;
    full.register("full", false).await;
    let _d = full.socket("full", 0).await;
    let _e = full.socket("full", 0).await;
    assert_eq!(handshake_status(full.ws, "full").await, 503, "node full");

    let rate = TestNode::start("limits:\n  connect_rate_per_ip: 3").await;
    rate.register("r", false).await;
    // Not WebSocket requests get 400 before admission: they use no slot.
    for _ in 0..5 {
        assert_eq!(http(rate.ws, "GET", "/ws?topic=r", None, None).await.0, 400);
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(handshake_status(rate.ws, "r").await);
    }
    assert_eq!(codes, [101, 101, 101, 429, 429]);
}

/// The status a WebSocket handshake for `topic` gets; the socket is dropped.
async fn handshake_status(addr: std::net::SocketAddr, topic: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut status_line = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut status_line))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&status_line[9..]).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_topics_are_freed_and_sockets_survive_them() {
    let node = TestNode::start("topic_ttl: 1s").await;
    node.register("short", true).await;
    let mut socket = node.socket("short", 1).await;
    let before = node.node.registry().local_entries();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(node.publish("short", &json!(1)).await, 404);
    assert_eq!(
        node.node.registry().local_entries(),
        before - 1,
        "the sweeper freed the entry"
    );
    node.register("short", true).await;
    assert_eq!(node.publish("short", &json!(2)).await, 200);
    socket
        .expect_push(&json!(2), "the old socket receives after re-register")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_token_written_by_hand_is_accepted() {
    // bin2hex(json_encode(["user_id"=>42,"topic"=>"qso/live:é","expires"=>2000000000]))
    // signed with hash_hmac("sha256", $hex, SECRET); the signature below was
    // computed once with python3's hmac module from these literal strings.
    let encoded = "7b22757365725f6964223a34322c22746f706963223a2271736f5c2f6c6976653a5c7530306539222c2265787069726573223a323030303030303030307d";
    let signature = "f2d89b6a0d9f20fda438740b2b963ab083b823129022b3832ab75a4a5f2c87a8";
    let node = TestNode::start("").await;
    node.register("qso/live:é", true).await;
    let mut ws = Ws::connect(node.ws, "qso/live:é").await;
    ws.send_json(&json!({"type": "auth", "token": format!("{encoded}.{signature}")}))
        .await;
    assert_eq!(
        ws.recv_json(Duration::from_secs(5)).await,
        Some(json!({"type": "auth_ok"}))
    );
    node.wait_status(Duration::from_secs(5), "counted", |s| {
        s["connected_clients"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_stop_closes_sockets_with_1001() {
    let node = TestNode::start("").await;
    node.register("bye", false).await;
    let mut sockets = vec![node.socket("bye", 0).await, node.socket("bye", 0).await];
    let stopping = tokio::spawn(node.stop());
    for socket in &mut sockets {
        assert_eq!(socket.close_code(Duration::from_secs(5)).await, Some(1001));
    }
    stopping.await.unwrap();
}

fn binary() -> Command {
    Process::command(&std::env::temp_dir())
}

fn write_config(dir: &std::path::Path, ws: u16, internal: u16) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!("ws_bind: 127.0.0.1\nws_port: {ws}\ninternal_port: {internal}\nworker_secret: \"{SECRET}\"\n"),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_with_1001_exits_and_restart_loses_the_registry() {
    let dir = tempdir("single");
    let (ws, internal) = crate::support::two_free_ports();
    let config = write_config(&dir, ws, internal);
    // the Go flag spelling
    let mut child = binary()
        .arg("-config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(internal).await;
    let addr = format!("127.0.0.1:{internal}").parse().unwrap();
    let body = json!({"topic": "t", "meta": {"require_token": false}}).to_string();
    assert_eq!(
        http(
            addr,
            "POST",
            "/internal/register",
            Some(body.as_bytes()),
            Some(SECRET)
        )
        .await
        .0,
        200
    );
    let mut socket = Ws::connect(format!("127.0.0.1:{ws}").parse().unwrap(), "t").await;
    socket.send_json(&json!({"type": "auth"})).await;
    assert_eq!(
        socket.recv_json(Duration::from_secs(5)).await,
        Some(json!({"type": "auth_ok"}))
    );
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(socket.close_code(Duration::from_secs(10)).await, Some(1001));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "exits within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit: {status}");

    let mut child = binary()
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(internal).await;
    let publish = json!({"topic": "t", "payload": 1}).to_string();
    assert_eq!(
        http(
            addr,
            "POST",
            "/internal/publish",
            Some(publish.as_bytes()),
            Some(SECRET)
        )
        .await
        .0,
        404
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn command_line_helpers() {
    let secret = binary().arg("gen-secret").output().unwrap();
    let secret = String::from_utf8(secret.stdout).unwrap();
    assert_eq!(secret.trim().len(), 64);
    assert!(secret.trim().chars().all(|c| c.is_ascii_hexdigit()));

    let token = binary()
        .args(["token", "--topic", "room/1", "--user", "7", "--ttl", "1h"])
        .env("SKYWAVE_WORKER_SECRET", SECRET)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let now = skywave::auth::unix_now();
    assert_eq!(
        skywave::auth::verify(SECRET.as_bytes(), token.trim(), "room/1", now),
        Ok(7)
    );

    let dir = tempdir("single");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        format!("worker_secret: \"{SECRET}\"\ntopic_ttl: banana\n"),
    )
    .unwrap();
    let out = binary().arg("check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic_ttl"));
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        format!("worker_secret: \"{SECRET}\"\nredis_ulr: x\n"),
    )
    .unwrap();
    let out = binary().arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("unknown config key `redis_ulr`")
            && text.contains("did you mean `redis_url`"),
        "{text}"
    );
    assert!(
        !text.contains(SECRET),
        "check-config never prints the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_listeners_leaves_the_node_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start("limits:\n  handshake_timeout: 1s").await;
    node.register("ok", true).await;
    let mut keeper = node.socket("ok", 1).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut half_open = Vec::new();
    for round in 0..40 {
        for addr in [node.ws, node.internal] {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let bytes = match round % 5 {
                0 => random(1 + round * 97),
                // a handshake that never finishes (slow-loris)
                1 => b"GET /ws?topic=ok HTTP/1.1\r\nHost: x\r\nUpgrade: web".to_vec(),
                // an upgrade followed by an oversize and an invalid UTF-8 frame
                2 => {
                    let mut b = b"GET /ws?topic=ok HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                        .to_vec();
                    b.extend_from_slice(&[0x81, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]);
                    b.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]);
                    b
                }
                // wrong secrets and broken JSON on the internal API
                3 => b"POST /internal/publish HTTP/1.1\r\nHost: x\r\nX-Worker-Secret: nope\r\nContent-Length: 5\r\n\r\n{\"a\":".to_vec(),
                _ => {
                    let mut b = b"POST /internal/register HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n".to_vec();
                    b.extend(random(4096));
                    b
                }
            };
            let _ = stream.write_all(&bytes).await;
            if round % 5 == 1 {
                half_open.push(stream);
            } else {
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_millis(300), stream.read_to_end(&mut sink))
                        .await;
            }
        }
    }
    // Still serving: status, a new socket, and a publish to the old one.
    assert_eq!(node.status("").await["status"], "ok");
    let mut fresh = node.socket("ok", 2).await;
    assert_eq!(node.publish("ok", &json!("alive")).await, 200);
    keeper
        .expect_push(&json!("alive"), "the socket opened before the garbage")
        .await;
    fresh
        .expect_push(&json!("alive"), "a socket opened after the garbage")
        .await;
    // Half-open handshakes are cut after the handshake timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for mut stream in half_open {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "a slow-loris connection is closed by the server"
        );
    }
}

/// A socket that keeps up gets its pushes written by the fan-out itself
/// (write-through, counted), in order, and its own ping is still answered
/// between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_socket_that_keeps_up_are_written_through_in_order() {
    use futures_util::SinkExt;
    let node = TestNode::start("").await;
    node.register("through", true).await;
    let mut ws = node.socket("through", 1).await;
    for seq in 0..20 {
        assert_eq!(node.publish("through", &json!({"seq": seq})).await, 200);
        ws.expect_push(&json!({"seq": seq}), "in order").await;
        if seq == 10 {
            ws.0.send(tokio_tungstenite::tungstenite::Message::Ping(
                vec![7].into(),
            ))
            .await
            .expect("ping");
        }
    }
    let metrics = http(node.internal, "GET", "/metrics", None, Some(SECRET))
        .await
        .1;
    let through = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skywave_deliveries_written_through_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the counter");
    println!("{through} of 20 deliveries written through");
    assert!(through > 0 && through <= 20, "{through}");
}
