//! One authenticated socket, from the auth frame to the close.
//!
//! A single task per socket: it waits for the auth frame (10 s), subscribes
//! the socket in the hub *before* sending `auth_ok` (so a publish made after
//! the client saw `auth_ok` always reaches it), then writes queued frames,
//! answers pings and `worker.status` requests, pings every 30 s and drops the
//! socket after 60 s of silence or a write that takes over 10 s. The only
//! place that picks WebSocket close codes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::auth::{check_auth_frame, AuthFailure, UNAUTHORIZED_MESSAGE};
use super::codec::{DecodeError, Inbound};
use super::conn::{Connection, ReadError};
use crate::frames;
use crate::hub::{Frame, Outgoing};
use crate::metrics::Refusal;
use crate::node::{Node, StatusRequest};
use crate::registry::{TopicMeta, STATUS_TOPIC};

const PING_INTERVAL: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_THROTTLE: Duration = Duration::from_millis(700);
/// Bound on the polite part of a close (close frame out, peer's close in).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

pub async fn run(mut conn: Connection, node: Arc<Node>, topic: String, meta: TopicMeta) {
    // Boxed: the handshake's state is needed once and should not stay in the
    // (long-lived) session future; the same goes for status requests below.
    let Some(user_id) = Box::pin(authenticate(&mut conn, &node, &topic, meta)).await else {
        return;
    };
    let subscription = node.hub().subscribe(&topic, user_id);
    node.metrics().authenticated.fetch_add(1, Ordering::Relaxed);
    if write(&mut conn, &node, &frames::auth_ok()).await.is_err() {
        return;
    }
    let is_status_topic = topic == STATUS_TOPIC;
    drop(topic);
    let outbox = subscription.outbox();
    let mut last_heard = Instant::now();
    let mut next_ping = last_heard + PING_INTERVAL;
    let mut last_status: Option<Instant> = None;
    // One timer for both the ping and the idle deadline, reset only when
    // the earlier of the two moves.
    let keepalive = tokio::time::sleep_until(next_ping);
    tokio::pin!(keepalive);
    // Created once: every socket shares the node's token, and re-creating
    // this future per loop would lock the token's state twice per frame.
    let shutdown = node.shutdown().cancelled();
    tokio::pin!(shutdown);

    loop {
        let idle_deadline = last_heard + IDLE_TIMEOUT;
        let wake_at = next_ping.min(idle_deadline);
        if keepalive.deadline() != wake_at {
            keepalive.as_mut().reset(wake_at);
        }
        tokio::select! {
            () = &mut shutdown => {
                close_with(&mut conn, close::GOING_AWAY, "server shutting down").await;
                return;
            }
            _ = outbox.ready() => {
                while let Some(item) = outbox.pop() {
                    let frame = match item {
                        Outgoing::Frame(frame) => frame,
                        Outgoing::Lagged { missed } => {
                            node.metrics().lagged_notices.fetch_add(1, Ordering::Relaxed);
                            frames::lagged(missed)
                        }
                    };
                    if write(&mut conn, &node, &frame).await.is_err() {
                        return;
                    }
                }
            }
            inbound = conn.recv() => {
                let inbound = match inbound {
                    Ok(inbound) => inbound,
                    Err(error) => {
                        Box::pin(fail(&mut conn, &node, error)).await;
                        return;
                    }
                };
                last_heard = Instant::now();
                match inbound {
                    Inbound::Ping(payload) => {
                        if Box::pin(timeout(WRITE_TIMEOUT, conn.send_pong(&payload))).await.map_or(true, |r| r.is_err()) {
                            return;
                        }
                    }
                    Inbound::Close(code) => {
                        let (code, reason) = reply_to_close(code);
                        close_with(&mut conn, code, reason).await;
                        return;
                    }
                    Inbound::Text(text)
                        if is_status_topic
                            && wants_status(&text)
                            && last_status.is_none_or(|at| at.elapsed() >= STATUS_THROTTLE) =>
                    {
                        last_status = Some(Instant::now());
                        let request = StatusRequest { uptime_seconds: true, ..Default::default() };
                        let report = Box::pin(node.status(request)).await;
                        if write(&mut conn, &node, &frames::status(&report)).await.is_err() {
                            return;
                        }
                    }
                    // Everything else after auth is ignored.
                    Inbound::Text(_) | Inbound::Binary(_) | Inbound::Pong => {}
                }
            }
            () = &mut keepalive => {
                if Instant::now() >= idle_deadline {
                    node.metrics().idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("dropping a silent socket");
                    close_with(&mut conn, close::NORMAL, "idle timeout").await;
                    return;
                }
                next_ping = Instant::now() + PING_INTERVAL;
                if Box::pin(timeout(WRITE_TIMEOUT, conn.send_ping())).await.map_or(true, |r| r.is_err()) {
                    return;
                }
            }
        }
    }
}

/// Waits for the auth frame; on failure sends the error frame and closes.
async fn authenticate(
    conn: &mut Connection,
    node: &Node,
    topic: &str,
    meta: TopicMeta,
) -> Option<i64> {
    let deadline = Instant::now() + node.config().limits.auth_timeout;
    let first = loop {
        let inbound = tokio::select! {
            inbound = tokio::time::timeout_at(deadline, conn.recv()) => inbound,
            _ = node.shutdown().cancelled() => {
                close_with(conn, close::GOING_AWAY, "server shutting down").await;
                return None;
            }
        };
        match inbound {
            Err(_) => {
                node.metrics().refused(Refusal::AuthTimeout);
                close_with(conn, close::POLICY_VIOLATION, "auth timeout").await;
                return None;
            }
            Ok(Err(error)) => {
                fail(conn, node, error).await;
                return None;
            }
            Ok(Ok(Inbound::Text(data) | Inbound::Binary(data))) => break data,
            Ok(Ok(Inbound::Ping(payload))) => {
                if timeout(WRITE_TIMEOUT, conn.send_pong(&payload))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    return None;
                }
            }
            Ok(Ok(Inbound::Pong)) => {}
            Ok(Ok(Inbound::Close(code))) => {
                let (code, reason) = reply_to_close(code);
                close_with(conn, code, reason).await;
                return None;
            }
        }
    };
    let secret = node.config().worker_secret.expose().as_bytes();
    match check_auth_frame(&first, topic, meta, secret, crate::auth::unix_now()) {
        Ok(user_id) => Some(user_id),
        Err(AuthFailure::Required(message)) => {
            node.metrics().refused(Refusal::AuthRequired);
            tracing::debug!(reason = message, "auth frame refused");
            refuse(conn, node, frames::error("auth_required", message)).await;
            None
        }
        Err(AuthFailure::Unauthorized(reason)) => {
            node.metrics().refused(Refusal::Unauthorized);
            tracing::debug!(reason = reason.label(), "token refused");
            refuse(
                conn,
                node,
                frames::error("unauthorized", UNAUTHORIZED_MESSAGE),
            )
            .await;
            None
        }
    }
}

async fn refuse(conn: &mut Connection, node: &Node, error_frame: Frame) {
    if write(conn, node, &error_frame).await.is_ok() {
        close_with(conn, close::POLICY_VIOLATION, "").await;
    }
}

fn wants_status(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|fields| fields.get("type").and_then(|t| t.as_str()) == Some("status"))
}

/// The close (code, reason) that answers a peer's close: its own code when
/// a peer may send it, 1000 when it sent none, and 1002 for a code no
/// endpoint may put on the wire (RFC 6455 section 7.4): undefined (below
/// 1000, 1016-2999, 5000 and up), reserved (1004) or only for reporting a
/// close locally (1005, 1006, 1015).
fn reply_to_close(code: Option<u16>) -> (u16, &'static str) {
    match code {
        None => (close::NORMAL, ""),
        Some(code) if is_sendable_close_code(code) => (code, ""),
        Some(_) => (close::PROTOCOL_ERROR, "invalid close code"),
    }
}

/// The RFC's codes (1000-1003, 1007-1011), those IANA registered since
/// (1012-1014), and those for libraries and applications (3000-4999).
fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Writes one text frame within the write deadline.
async fn write(conn: &mut Connection, node: &Node, frame: &Frame) -> Result<(), ()> {
    match timeout(WRITE_TIMEOUT, conn.send_text(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            node.metrics()
                .write_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropping a socket whose write did not complete in time");
            Err(())
        }
    }
}

/// Boxed, like every path taken once per socket, so that its state does not
/// enlarge the long-lived session future.
async fn close_with(conn: &mut Connection, code: u16, reason: &'static str) {
    let _ = Box::pin(timeout(CLOSE_TIMEOUT, conn.close(code, reason))).await;
}

/// Maps a read error to the close the peer gets.
async fn fail(conn: &mut Connection, node: &Node, error: ReadError) {
    match error {
        ReadError::Gone => {}
        ReadError::Invalid(DecodeError::TooBig) => {
            node.metrics()
                .oversize_messages
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("inbound message over 4 KiB");
            close_with(conn, close::TOO_BIG, "message too big").await;
        }
        ReadError::Invalid(DecodeError::Protocol(problem)) => {
            tracing::debug!(problem, "websocket protocol error");
            close_with(conn, close::PROTOCOL_ERROR, "protocol error").await;
        }
        ReadError::Invalid(DecodeError::InvalidUtf8) => {
            close_with(conn, close::INVALID_DATA, "invalid utf-8").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_close_codes_are_echoed() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(reply_to_close(Some(code)), (code, ""), "{code}");
        }
        assert_eq!(reply_to_close(None), (close::NORMAL, ""), "no code: 1000");
    }

    #[test]
    fn invalid_close_codes_are_answered_with_1002() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                reply_to_close(Some(code)).0,
                close::PROTOCOL_ERROR,
                "{code}"
            );
        }
    }
}
