//! One authenticated socket, from the auth frame to the close.
//!
//! A single task per socket: it waits for the auth frame (10 s), subscribes
//! the socket in the hub *before* sending `auth_ok` (so a publish made after
//! the client saw `auth_ok` always reaches it), then writes queued frames,
//! answers `worker.status` requests, pings every 30 s and drops the socket
//! after 60 s of silence or a write that takes over 10 s. The only place that
//! picks WebSocket close codes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::{timeout, Instant};

use super::auth::{check_auth_frame, AuthFailure, UNAUTHORIZED_MESSAGE};
use super::frames;
use crate::hub::{Frame, Outgoing};
use crate::metrics::Refusal;
use crate::node::{Node, StatusRequest};
use crate::registry::{TopicMeta, STATUS_TOPIC};

const PING_INTERVAL: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const STATUS_THROTTLE: Duration = Duration::from_millis(700);
/// Bound on the polite part of a close (sending the close frame).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

pub async fn run(mut socket: WebSocket, node: Arc<Node>, topic: String, meta: TopicMeta) {
    // Boxed: the handshake's state is needed once and should not stay in the
    // (long-lived) session future; the same goes for status requests below.
    let user_id = match Box::pin(authenticate(&mut socket, &node, &topic, meta)).await {
        Some(user_id) => user_id,
        None => return,
    };
    let subscription = node.hub.subscribe(&topic, user_id);
    node.metrics.authenticated.fetch_add(1, Ordering::Relaxed);
    if send(&mut socket, Message::Text(frames::auth_ok()))
        .await
        .is_err()
    {
        return;
    }
    let is_status_topic = topic == STATUS_TOPIC;
    let outbox = subscription.outbox();
    let mut last_heard = Instant::now();
    let mut next_ping = last_heard + PING_INTERVAL;
    let mut last_status: Option<Instant> = None;
    // One timer for both the ping and the idle deadline, reset only when
    // the earlier of the two moves.
    let keepalive = tokio::time::sleep_until(next_ping);
    tokio::pin!(keepalive);

    loop {
        let idle_deadline = last_heard + IDLE_TIMEOUT;
        let wake_at = next_ping.min(idle_deadline);
        if keepalive.deadline() != wake_at {
            keepalive.as_mut().reset(wake_at);
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => {
                close_with(&mut socket, close::GOING_AWAY, "server shutting down").await;
                return;
            }
            _ = outbox.ready() => {
                while let Some(item) = outbox.pop() {
                    let message = match item {
                        Outgoing::Frame(frame) => Message::Text(frame),
                        Outgoing::Lagged { missed } => {
                            node.metrics.lagged_notices.fetch_add(1, Ordering::Relaxed);
                            Message::Text(frames::lagged(missed))
                        }
                    };
                    match send(&mut socket, message).await {
                        Ok(()) => {}
                        Err(SendError::Timeout) => {
                            node.metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("dropping a socket whose write did not complete in time");
                            return;
                        }
                        Err(SendError::Closed) => return,
                    }
                }
            }
            inbound = socket.recv() => {
                let message = match inbound {
                    None => return,
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        fail(&mut socket, &node, error).await;
                        return;
                    }
                };
                last_heard = Instant::now();
                match message {
                    Message::Close(_) => {
                        // tungstenite queues the close reply; reading on flushes it.
                        let _ = timeout(CLOSE_TIMEOUT, socket.recv()).await;
                        return;
                    }
                    Message::Text(text)
                        if is_status_topic
                            && wants_status(text.as_bytes())
                            && last_status.is_none_or(|at| at.elapsed() >= STATUS_THROTTLE) =>
                    {
                        last_status = Some(Instant::now());
                        let request = StatusRequest { uptime_seconds: true, ..Default::default() };
                        let report = Box::pin(node.status(request)).await;
                        if send(&mut socket, Message::Text(frames::status(&report))).await.is_err() {
                            return;
                        }
                    }
                    // Everything else after auth is ignored.
                    _ => {}
                }
            }
            () = &mut keepalive => {
                if Instant::now() >= idle_deadline {
                    node.metrics.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("dropping a silent socket");
                    close_with(&mut socket, close::NORMAL, "idle timeout").await;
                    return;
                }
                next_ping = Instant::now() + PING_INTERVAL;
                if send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for the auth frame; on failure sends the error frame and closes.
async fn authenticate(
    socket: &mut WebSocket,
    node: &Node,
    topic: &str,
    meta: TopicMeta,
) -> Option<i64> {
    let deadline = Instant::now() + node.config.limits.auth_timeout;
    let first = loop {
        let inbound = tokio::select! {
            inbound = timeout_at(deadline, socket.recv()) => inbound,
            _ = node.shutdown.cancelled() => {
                close_with(socket, close::GOING_AWAY, "server shutting down").await;
                return None;
            }
        };
        match inbound {
            Err(()) => {
                node.metrics.refused(Refusal::AuthTimeout);
                close_with(socket, close::POLICY_VIOLATION, "auth timeout").await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(error))) => {
                fail(socket, node, error).await;
                return None;
            }
            Ok(Some(Ok(Message::Text(text)))) => break text.as_bytes().to_vec(),
            Ok(Some(Ok(Message::Binary(data)))) => break data.to_vec(),
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(_))) => continue, // ping/pong before auth
        }
    };
    let secret = node.config.worker_secret.expose().as_bytes();
    match check_auth_frame(&first, topic, meta, secret, crate::auth::unix_now()) {
        Ok(user_id) => Some(user_id),
        Err(AuthFailure::Required(message)) => {
            node.metrics.refused(Refusal::AuthRequired);
            tracing::debug!(reason = message, "auth frame refused");
            refuse(socket, frames::error("auth_required", message)).await;
            None
        }
        Err(AuthFailure::Unauthorized(reason)) => {
            node.metrics.refused(Refusal::Unauthorized);
            tracing::debug!(reason = reason.label(), "token refused");
            refuse(socket, frames::error("unauthorized", UNAUTHORIZED_MESSAGE)).await;
            None
        }
    }
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, future: F) -> Result<F::Output, ()> {
    tokio::time::timeout_at(deadline, future)
        .await
        .map_err(|_| ())
}

async fn refuse(socket: &mut WebSocket, error_frame: Frame) {
    if send(socket, Message::Text(error_frame)).await.is_ok() {
        close_with(socket, close::POLICY_VIOLATION, "").await;
    }
}

fn wants_status(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|fields| fields.get("type").and_then(|t| t.as_str()) == Some("status"))
}

enum SendError {
    Timeout,
    Closed,
}

async fn send(socket: &mut WebSocket, message: Message) -> Result<(), SendError> {
    match timeout(WRITE_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendError::Closed),
        Err(_) => Err(SendError::Timeout),
    }
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
}

/// Maps a read error to the close the peer gets.
async fn fail(socket: &mut WebSocket, node: &Node, error: axum::Error) {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = error.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => {
            node.metrics
                .oversize_messages
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("inbound message over 4 KiB");
            close_with(socket, close::TOO_BIG, "message too big").await;
        }
        Some(WsError::Protocol(problem)) => {
            tracing::debug!(%problem, "websocket protocol error");
            close_with(socket, close::PROTOCOL_ERROR, "protocol error").await;
        }
        Some(WsError::Utf8(_)) => {
            close_with(socket, 1007, "invalid utf-8").await;
        }
        _ => tracing::debug!(error = %inner, "socket read failed"),
    }
}
