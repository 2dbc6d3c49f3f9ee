//! The dashboard's access rules on the internal listener: the login form
//! takes the secret in the body only, a wrong one is 401 without a cookie,
//! the session cookie is HttpOnly and SameSite=Strict, pages without it
//! redirect to the login page and the event stream answers 401, logout ends
//! the session, the secret never comes back in a page, a stream or the log,
//! and `/internal/*` still wants `X-Worker-Secret`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{parse_answer, request, tempdir, Answer, BinaryNode, TestNode, SECRET};

fn cookie_line(token: &str) -> String {
    format!("Cookie: skywave_session={token}\r\n")
}

/// Logs in through the form; returns the session token.
async fn login(addr: SocketAddr) -> String {
    let answer = request(addr, "POST", "/dashboard/login", "", &form(SECRET)).await;
    assert_eq!(answer.status, 303, "login: {}", answer.body);
    assert_eq!(answer.header("location"), Some("/dashboard/live"));
    let cookie = answer.header("set-cookie").expect("a session cookie");
    let token = cookie
        .strip_prefix("skywave_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("cookie value");
    token.to_string()
}

fn form(secret: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("secret", secret)
        .finish()
}

/// The first `count` samples of the event stream, and the stream's head.
async fn samples(addr: SocketAddr, token: &str, count: usize) -> (Answer, Vec<Value>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /dashboard/events HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
        cookie_line(token)
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&raw).to_string();
        let found: Vec<Value> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str(data).ok())
            .collect();
        if found.len() >= count {
            return (parse_answer(&text), found);
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("samples within 10 s")
            .expect("read");
        assert!(read > 0, "stream ended early: {text}");
        raw.extend_from_slice(&buffer[..read]);
    }
}

/// A request carrying the session cookie `token`, without a body.
async fn with_session(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> crate::support::Answer {
    request(addr, method, path, &cookie_line(token), "").await
}

#[tokio::test]
async fn the_login_page_is_open_and_posts_the_secret_in_the_body() {
    let node = TestNode::start("").await;
    let answer = request(node.internal, "GET", "/dashboard", "", "").await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(answer
        .body
        .contains(r#"<form method="post" action="/dashboard/login""#));
    assert!(answer.body.contains(r#"type="password""#));
    assert!(!answer.body.contains(SECRET));
    let policy = answer.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(answer.header("set-cookie").is_none());
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401_without_a_cookie_and_is_not_echoed() {
    let node = TestNode::start("").await;
    let wrong = "not-the-secret-Zq81x";
    for body in [form(wrong), String::new(), form(""), "secret".to_string()] {
        let answer = request(node.internal, "POST", "/dashboard/login", "", &body).await;
        assert_eq!(answer.status, 401, "login with {body:?}");
        assert!(answer.header("set-cookie").is_none(), "{body:?}");
        assert!(answer.body.contains("Wrong secret"), "the form again");
        assert!(!answer.body.contains(wrong) && !answer.body.contains(SECRET));
    }
    // Twice the field: not ours to pick one.
    let twice = format!("{}&{}", form(SECRET), form(SECRET));
    let answer = request(node.internal, "POST", "/dashboard/login", "", &twice).await;
    assert_eq!(answer.status, 401);
    // The secret in a URL is never taken, nor in the API's header.
    let in_url = format!("/dashboard/login?{}", form(SECRET));
    let answer = request(node.internal, "POST", &in_url, "", "").await;
    assert_eq!(answer.status, 401, "a secret in the query string");
    let header = format!("X-Worker-Secret: {SECRET}\r\n");
    let answer = request(node.internal, "POST", "/dashboard/login", &header, "").await;
    assert_eq!(answer.status, 401, "X-Worker-Secret does not log in");
    let answer = request(node.internal, "GET", "/dashboard/login", "", "").await;
    assert_eq!(answer.status, 405, "login is a POST");
}

#[tokio::test]
async fn without_a_session_the_page_redirects_and_the_stream_is_401() {
    let node = TestNode::start("").await;
    let header = format!("X-Worker-Secret: {SECRET}\r\n");
    for extra in ["", &cookie_line(&"0".repeat(64)), &header] {
        let page = request(node.internal, "GET", "/dashboard/live", extra, "").await;
        assert_eq!(page.status, 303, "{extra:?}");
        assert_eq!(page.header("location"), Some("/dashboard"));
        let events = request(node.internal, "GET", "/dashboard/events", extra, "").await;
        assert_eq!(events.status, 401, "{extra:?}");
    }
    let answer = request(node.internal, "GET", "/dashboard/other", "", "").await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn a_login_sets_a_strict_httponly_cookie_that_opens_the_page_and_the_stream() {
    let node = TestNode::start("").await;
    let answer = request(node.internal, "POST", "/dashboard/login", "", &form(SECRET)).await;
    assert_eq!(answer.status, 303);
    let cookie = answer.header("set-cookie").expect("cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/dashboard",
        "Max-Age=43200",
    ] {
        assert!(
            cookie.split("; ").any(|part| part == flag),
            "{flag} in {cookie}"
        );
    }
    assert!(!cookie.contains(SECRET));
    let token = login(node.internal).await;
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));

    let page = with_session(node.internal, "GET", "/dashboard/live", &token).await;
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains(r#"new EventSource("/dashboard/events")"#));
    assert!(!page.body.contains(SECRET));
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    let again = request(node.internal, "GET", "/dashboard", &cookie_line(&token), "").await;
    assert_eq!(again.status, 303, "logged in: the login page sends on");
    assert_eq!(again.header("location"), Some("/dashboard/live"));

    node.register("dash.topic", true).await;
    let _socket = node.socket("dash.topic", 5).await;
    assert_eq!(
        node.publish("dash.topic", &serde_json::json!({"n": 1}))
            .await,
        200
    );
    let (head, samples) = samples(node.internal, &token, 2).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let first = &samples[0];
    assert_eq!(first["mode"], "single");
    assert_eq!(first["redis"], "not used");
    assert_eq!(first["publishes"], 1);
    assert!(
        first["publishes_per_second"].is_null(),
        "a rate needs two samples"
    );
    assert!(samples[1]["publishes_per_second"].is_number());
    assert_eq!(first["envelopes_dropped"], Value::Null);
    let nodes = first["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["this_node"], true);
    assert_eq!(nodes[0]["connected_sockets"], 1);
    assert_eq!(nodes[0]["mode"], "single");
    assert_eq!(first["latency"]["count"], 1);
    assert_eq!(first["refusals"].as_array().map(Vec::len), Some(6));
    assert!(!head.body.contains(SECRET));
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let node = TestNode::start("").await;
    let token = login(node.internal).await;
    let out = with_session(node.internal, "POST", "/dashboard/logout", &token).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("/dashboard"));
    let cleared = out.header("set-cookie").expect("cookie cleared");
    assert!(cleared.starts_with("skywave_session=;") && cleared.contains("Max-Age=0"));
    let page = with_session(node.internal, "GET", "/dashboard/live", &token).await;
    assert_eq!(page.status, 303, "the old cookie opens nothing");
    let events = with_session(node.internal, "GET", "/dashboard/events", &token).await;
    assert_eq!(events.status, 401);
}

#[tokio::test]
async fn a_session_is_not_a_key_to_the_internal_api_and_the_probes_stay_open() {
    let node = TestNode::start("").await;
    let token = login(node.internal).await;
    let status = with_session(node.internal, "GET", "/internal/status", &token).await;
    assert_eq!(status.status, 403);
    let header = format!("X-Worker-Secret: {SECRET}\r\n");
    let status = request(node.internal, "GET", "/internal/status", &header, "").await;
    assert_eq!(status.status, 200);
    for open in ["/readyz", "/metrics"] {
        assert_eq!(
            request(node.internal, "GET", open, "", "").await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_reaches_the_log_even_at_debug() {
    let dir = tempdir("dashlog");
    let node = BinaryNode::start(&dir, "app", "log_level: debug").await;
    let wrong = "not-the-secret-Pw42m";
    let refused = request(node.internal, "POST", "/dashboard/login", "", &form(wrong)).await;
    assert_eq!(refused.status, 401);
    let token = login(node.internal).await;
    let page = with_session(node.internal, "GET", "/dashboard/live", &token).await;
    assert_eq!(page.status, 200);
    node.process
        .wait_for_output("dashboard login refused", Duration::from_secs(5))
        .await;
    let log = node
        .process
        .wait_for_output("dashboard login peer=", Duration::from_secs(5))
        .await;
    for needle in [SECRET, wrong, token.as_str()] {
        assert!(!log.contains(needle), "{needle:?} in the log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_at_shutdown_and_does_not_hold_it_up() {
    let node = TestNode::start("").await;
    let token = login(node.internal).await;
    let mut stream = TcpStream::connect(node.internal).await.expect("connect");
    let head = format!(
        "GET /dashboard/events HTTP/1.1\r\nHost: x\r\n{}\r\n",
        cookie_line(&token)
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 8192];
    while !String::from_utf8_lossy(&seen).contains("event: sample") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a first sample within 5 s")
            .expect("read");
        assert!(read > 0, "stream ended before a sample");
        seen.extend_from_slice(&buffer[..read]);
    }
    let started = std::time::Instant::now();
    node.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with a stream open",
        started.elapsed()
    );
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the stream ends")
        .ok();
}
