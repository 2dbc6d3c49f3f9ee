//! One authenticated socket, from the auth frame to the close.
//!
//! A single task per socket: it waits for the auth frame (10 s), subscribes
//! the socket in the hub *before* sending `auth_ok` (so a publish made after
//! the client saw `auth_ok` always reaches it), then writes queued frames,
//! answers pings and `worker.status` requests, pings every 30 s and drops the
//! socket after 60 s of silence. Writes and their bounds (a stuck socket is
//! closed with 1013) are `write.rs`; the close codes are `close.rs`. At
//! shutdown the session first writes what was queued for it (bounded by the
//! node's drain deadline), then closes with 1001.

mod close;
mod write;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use self::close::{close_with, fail, reply_to_close};
use self::write::{claim, drain, fresh_now, write, write_queued, WriteError, WRITE_TIMEOUT};
use super::auth::{check_auth_frame, AuthFailure, UNAUTHORIZED_MESSAGE};
use super::codec::Inbound;
use super::conn::Connection;
use crate::frames;
use crate::hub::{Frame, Outbox};
use crate::metrics::Refusal;
use crate::node::{Node, StatusRequest};
use crate::registry::{TopicMeta, STATUS_TOPIC};

const PING_INTERVAL: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const STATUS_THROTTLE: Duration = Duration::from_millis(700);

pub async fn run(
    mut conn: Connection,
    node: Arc<Node>,
    topic: String,
    meta: TopicMeta,
    client: IpAddr,
) {
    // Boxed: the handshake's state is needed once and should not stay in the
    // (long-lived) session future; the same goes for status requests below.
    let Some(user_id) = Box::pin(authenticate(&mut conn, &node, &topic, meta, client)).await else {
        return;
    };
    super::log::connection(
        &node,
        "websocket authenticated",
        client,
        &topic,
        Some(user_id),
    );
    let subscription = node.hub().subscribe(&topic, user_id);
    node.metrics().authenticated.fetch_add(1, Ordering::Relaxed);
    // The hub only queues until auth_ok is out (a new outbox is the
    // session's); then it may write pushes into the socket itself.
    if let Some(socket) = conn.socket() {
        subscription.outbox().attach(socket);
    }
    if write(&mut conn, &node, None, &frames::auth_ok())
        .await
        .is_err()
    {
        return;
    }
    subscription.outbox().release();
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
                Box::pin(flush_and_close(&mut conn, &node, outbox)).await;
                return;
            }
            _ = outbox.ready() => {
                // Until shutdown, whose branch then takes over (an atomic
                // read: the token's own check takes a lock).
                while node.drain_deadline().is_none() {
                    match write_queued(&mut conn, &node, outbox, fresh_now()).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(error) => {
                            Box::pin(end_after(&mut conn, &node, outbox, error)).await;
                            return;
                        }
                    }
                }
            }
            inbound = conn.recv() => {
                let inbound = match inbound {
                    Ok(inbound) => inbound,
                    Err(error) => {
                        if claim(&mut conn, &node, outbox).await.is_ok() {
                            Box::pin(fail(&mut conn, &node, error)).await;
                        }
                        return;
                    }
                };
                last_heard = Instant::now();
                match inbound {
                    Inbound::Ping(payload) => {
                        if claim(&mut conn, &node, outbox).await.is_err()
                            || Box::pin(timeout(WRITE_TIMEOUT, conn.send_pong(&payload))).await.map_or(true, |r| r.is_err())
                        {
                            return;
                        }
                        outbox.release();
                    }
                    Inbound::Close(code) => {
                        let (code, reason) = reply_to_close(code);
                        if claim(&mut conn, &node, outbox).await.is_ok() {
                            close_with(&mut conn, code, reason).await;
                        }
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
                        let written = match claim(&mut conn, &node, outbox).await {
                            Ok(()) => write(&mut conn, &node, Some(outbox), &frames::status(&report)).await,
                            Err(error) => Err(error),
                        };
                        if let Err(error) = written {
                            Box::pin(end_after(&mut conn, &node, outbox, error)).await;
                            return;
                        }
                        outbox.release();
                    }
                    // Everything else after auth is ignored.
                    Inbound::Text(_) | Inbound::Binary(_) | Inbound::Pong => {}
                }
            }
            () = &mut keepalive => {
                if claim(&mut conn, &node, outbox).await.is_err() {
                    return;
                }
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
                outbox.release();
            }
        }
    }
}

/// At shutdown: what was queued for the socket first, then 1001.
async fn flush_and_close(conn: &mut Connection, node: &Node, outbox: &Outbox) {
    match drain(conn, node, outbox).await {
        Ok(()) => {}
        Err(WriteError::Gone) => return,
        Err(_) => {
            node.metrics()
                .shutdown_unflushed
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    // The hub stops writing through before the close frame goes out.
    if claim(conn, node, outbox).await.is_ok() {
        close_with(conn, close::GOING_AWAY, "server shutting down").await;
    }
}

/// How the session ends after a write that did not complete.
async fn end_after(conn: &mut Connection, node: &Node, outbox: &Outbox, error: WriteError) {
    // The hub stops writing through; a write that failed leaves the session
    // with nothing the hub cut (it only cuts while the session is idle).
    let _ = outbox.claim();
    match error {
        WriteError::Gone | WriteError::TimedOut => {}
        WriteError::Stalled => close_with(conn, close::TRY_AGAIN_LATER, "not reading").await,
        // Shutdown began during the write and its deadline passed.
        WriteError::Deadline => {
            node.metrics()
                .shutdown_unflushed
                .fetch_add(1, Ordering::Relaxed);
            close_with(conn, close::GOING_AWAY, "server shutting down").await;
        }
    }
}

/// Waits for the auth frame; on failure sends the error frame and closes.
async fn authenticate(
    conn: &mut Connection,
    node: &Node,
    topic: &str,
    meta: TopicMeta,
    client: IpAddr,
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
            tracing::debug!(%client, reason = message, "auth frame refused");
            refuse(conn, node, frames::error("auth_required", message)).await;
            None
        }
        Err(AuthFailure::Unauthorized(reason)) => {
            node.metrics().refused(Refusal::Unauthorized);
            tracing::debug!(%client, reason = reason.label(), "token refused");
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
    if write(conn, node, None, &error_frame).await.is_ok() {
        close_with(conn, close::POLICY_VIOLATION, "").await;
    }
}

fn wants_status(text: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|fields| fields.get("type").and_then(|t| t.as_str()) == Some("status"))
}
