//! Connection logs through the real binary: connect, auth and close with the
//! client address as believed from a trusted proxy range; at info only when
//! asked for.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{tempdir, BinaryNode, SECRET};

/// A socket on `topic` that says it is forwarded for `client`, authenticates
/// and closes.
async fn visit(node: &BinaryNode, topic: &str, client: &str) {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .finish();
    let mut request = format!("ws://{}/ws?{query}", node.ws)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let token =
        skywave::auth::sign_hex_token(SECRET.as_bytes(), 7, topic, skywave::auth::unix_now() + 60);
    socket
        .send(Message::text(
            json!({"type": "auth", "token": token}).to_string(),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_auth_and_close_are_logged_with_the_forwarded_client() {
    let dir = tempdir("connlogs");
    let proxies = "  trusted_proxies: [\"127.0.0.0/8\"]\n";
    let logged = BinaryNode::start(
        &dir,
        "logged",
        &format!("log_level: info\nlimits:\n  log_connections: true\n{proxies}"),
    )
    .await;
    let quiet = BinaryNode::start(
        &dir,
        "quiet",
        &format!("log_level: info\nlimits:\n{proxies}"),
    )
    .await;
    for node in [&logged, &quiet] {
        node.register("room\u{1b}[31m", true).await;
        visit(node, "room\u{1b}[31m", "198.51.100.7").await;
    }
    let output = logged
        .process
        .wait_for_output("websocket closed", Duration::from_secs(10))
        .await;
    for what in [
        "websocket connected",
        "websocket authenticated",
        "websocket closed",
    ] {
        let line = output
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what:?} in:\n{output}"));
        assert!(line.contains("client=198.51.100.7"), "{line}");
        assert!(!line.contains('\u{1b}'), "the topic is escaped: {line}");
    }
    assert!(output.contains("user_id=7"), "{output}");
    let quiet_output = quiet.process.output();
    assert!(
        !quiet_output.contains("websocket connected"),
        "debug by default: {quiet_output}"
    );
}
