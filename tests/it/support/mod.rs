//! Test support for the integration tests: the real app started
//! in-process on port 0, a real `redis-server` on a free loopback port,
//! WebSocket clients (tokio-tungstenite) and a small HTTP client.

mod answer;
mod nats;
mod process;
mod raw;
mod redis_ha;
mod redis_server;

pub use self::answer::{parse_answer, request, Answer};
pub use self::nats::{NatsCluster, NatsServer};
pub use self::process::{binary_pair, tempdir, wait_port, BinaryNode, Process};
pub use self::raw::{publish_pipelined, StuckSocket};
pub use self::redis_ha::{ask, eventually, RedisCluster, Secured, SentinelSet};
pub use self::redis_server::{admin, RedisServer, TlsFiles};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use skywave::node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// A skywave node running in this test process.
pub struct TestNode {
    pub client: NodeClient,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// What a publisher and a browser see of a node: its two listeners. Both
/// kinds of node (in-process, real binary) hand this out.
#[derive(Clone, Copy)]
pub struct NodeClient {
    pub ws: SocketAddr,
    pub internal: SocketAddr,
}

impl std::ops::Deref for TestNode {
    type Target = NodeClient;
    fn deref(&self) -> &NodeClient {
        &self.client
    }
}

impl TestNode {
    /// Starts a node; `extra` is appended to the YAML config.
    pub async fn start(extra: &str) -> TestNode {
        let yaml = format!(
            "ws_bind: 127.0.0.1\nws_port: 0\ninternal_bind: 127.0.0.1\ninternal_port: 0\n\
             worker_secret: \"{SECRET}\"\nlog_level: warn\n{extra}\n"
        );
        let config = skywave::Config::from_yaml(&yaml)
            .expect("test config")
            .config;
        let app = skywave::App::bind(config).await.expect("bind");
        let (ws, internal, node) = (app.ws_addr(), app.internal_addr(), app.node());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("run");
        });
        TestNode {
            client: NodeClient { ws, internal },
            node,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Graceful stop; returns once `run` has returned.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .expect("node stops within 15 s")
                .expect("run task");
        }
    }
}

impl NodeClient {
    /// A GET on the internal listener, with or without the secret.
    pub async fn get(&self, path: &str, secret: Option<&str>) -> (u16, String) {
        http(self.internal, "GET", path, None, secret).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        http(
            self.internal,
            "POST",
            path,
            Some(body.to_string().as_bytes()),
            Some(SECRET),
        )
        .await
    }

    pub async fn register(&self, topic: &str, require_token: bool) {
        let (code, body) = self
            .post(
                "/internal/register",
                &json!({"topic": topic, "meta": {"require_token": require_token}}),
            )
            .await;
        assert_eq!(code, 200, "register {topic}: {body}");
    }

    pub async fn unregister(&self, topic: &str) {
        let (code, body) = self
            .post("/internal/unregister", &json!({"topic": topic}))
            .await;
        assert_eq!(code, 200, "unregister {topic}: {body}");
    }

    pub async fn publish(&self, topic: &str, payload: &Value) -> u16 {
        self.post(
            "/internal/publish",
            &json!({"topic": topic, "payload": payload}),
        )
        .await
        .0
    }

    pub async fn status(&self, query: &str) -> Value {
        let (code, body) = http(
            self.internal,
            "GET",
            &format!("/internal/status{query}"),
            None,
            Some(SECRET),
        )
        .await;
        assert_eq!(code, 200, "status: {body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Polls status until the node is in cluster mode with `nodes` nodes.
    pub async fn wait_cluster(&self, nodes: i64, within: Duration) -> Value {
        self.wait_status(within, "joins the cluster", |s| {
            s["mode"] == "cluster" && s["cluster_nodes"] == nodes
        })
        .await
    }

    /// Polls status until the node is degraded and `redis_error` (the
    /// broker's error) mentions `needle`.
    pub async fn wait_degraded(&self, needle: &str, what: &str) -> Value {
        self.wait_status(Duration::from_secs(10), what, |s| {
            s["mode"] == "degraded"
                && s["redis_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(needle))
        })
        .await
    }

    /// Polls status until `check` holds (at most `within`).
    pub async fn wait_status(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = self.status("").await;
            if check(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: last status {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An authenticated socket (waits until the node counts it).
    pub async fn socket(&self, topic: &str, user_id: i64) -> Ws {
        let token = skywave::auth::sign_hex_token(
            SECRET.as_bytes(),
            user_id,
            topic,
            skywave::auth::unix_now() + 3600,
        );
        let mut ws = Ws::connect(self.ws, topic).await;
        ws.send_json(&json!({"type": "auth", "token": token})).await;
        let reply = ws
            .recv_json(Duration::from_secs(5))
            .await
            .expect("auth reply");
        assert_eq!(reply, json!({"type": "auth_ok"}), "auth on {topic}");
        ws
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A WebSocket client.
pub struct Ws(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    pub async fn connect(addr: SocketAddr, topic: &str) -> Ws {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("topic", topic)
            .finish();
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?{query}"))
            .await
            .expect("websocket connect");
        Ws(stream)
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.0
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON; `None` on timeout or close.
    pub async fn recv_json(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn expect_push(&mut self, payload: &Value, what: &str) {
        let got = self.recv_json(Duration::from_secs(5)).await;
        assert_eq!(
            got,
            Some(json!({"type": "push", "payload": payload})),
            "{what}"
        );
    }

    pub async fn expect_silence(&mut self, for_: Duration, what: &str) {
        let got = self.recv_json(for_).await;
        assert_eq!(got, None, "{what}: expected nothing");
    }

    /// Every text frame (as JSON) until the server's close frame, and its
    /// code (`None` if the connection ended without one or `within` passed).
    pub async fn read_until_close(&mut self, within: Duration) -> (Vec<Value>, Option<u16>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    frames.push(serde_json::from_str(&text).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (frames, frame.map(|f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return (frames, None),
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.0.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A minimal HTTP/1.1 request (Connection: close); returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    secret: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(secret) = secret {
        head.push_str(&format!("X-Worker-Secret: {secret}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Two different free ports.
pub fn two_free_ports() -> (u16, u16) {
    (free_port(), free_port())
}

/// A loopback port nothing listens on, for a server a test starts later.
/// Taken from 2000..10000, below the kernel's ephemeral range (32768 and
/// up by default), and never handed out twice in this process: the ports
/// the kernel gives to port-0 listeners and to every outgoing connection
/// of a test running alongside come from the ephemeral range, so none of
/// them can take this port before its server binds it (with `bind` to
/// port 0 and release, as before, one did now and then: "Address already
/// in use"). `redis_ha::cluster_port` takes 10000..16000 (and +10000).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    unused_port(&NEXT, 2000, 8000, |_| true)
}

/// The next port of `low..low + span` (from an offset by process id, then
/// on from `next`) that binds on loopback and passes `also`.
pub fn unused_port(next: &AtomicU32, low: u32, span: u32, also: impl Fn(u16) -> bool) -> u16 {
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = (low + (start + next.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if bindable(port) && also(port) {
            return port;
        }
    }
    panic!("no free port in {low}..{}", low + span)
}

/// Whether a listener could bind `port` on loopback now.
pub fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A raw WebSocket upgrade request for `topic` (no auth afterwards): the
/// HTTP status it got, and the connection, to hold it open.
pub async fn raw_upgrade(addr: SocketAddr, topic: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws?topic={topic} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap_or(0);
    let code = std::str::from_utf8(&answer[..n])
        .ok()
        .and_then(|t| t.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, stream)
}
