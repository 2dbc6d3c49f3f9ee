//! Connection logs: a socket's connect, auth and close, with the client
//! address as believed from `limits.trusted_proxies` (a parsed address, so
//! nothing a client sends reaches the log raw) and the topic in escaped
//! form. At debug; at info with `limits.log_connections: true`.

use std::net::IpAddr;
use std::time::Duration;

use crate::node::Node;

pub fn connection(node: &Node, what: &'static str, client: IpAddr, topic: &str, user: Option<i64>) {
    if node.config().limits.log_connections {
        tracing::info!(%client, topic = ?topic, user_id = user, "{what}");
    } else {
        tracing::debug!(%client, topic = ?topic, user_id = user, "{what}");
    }
}

pub fn closed(node: &Node, client: IpAddr, topic: &str, lasted: Duration) {
    let seconds = lasted.as_secs_f64();
    if node.config().limits.log_connections {
        tracing::info!(%client, topic = ?topic, seconds, "websocket closed");
    } else {
        tracing::debug!(%client, topic = ?topic, seconds, "websocket closed");
    }
}
