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
use super::conn::{Connection, Upgrade};
use super::limits::Admission;
use super::MAX_INBOUND_MESSAGE;
use crate::frames;
use crate::hub::{Frame, Outbox};
use crate::metrics::Refusal;
use crate::node::{Node, StatusRequest};
use crate::registry::{TopicMeta, STATUS_TOPIC};

const PING_INTERVAL: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const STATUS_THROTTLE: Duration = Duration::from_millis(700);

/// The socket's whole life, from the upgrade to the close (one future, so
/// one allocation, for an idle socket; not an `async fn`, whose arguments
/// would be stored twice). The admission slot is given back, and the close
/// logged, however it ends.
pub fn run(
    on_upgrade: hyper::upgrade::OnUpgrade,
    node: Arc<Node>,
    topic: String,
    meta: TopicMeta,
    admission: Admission,
) -> impl std::future::Future<Output = ()> {
    // Built out here and moved in whole: a value the future takes apart
    // would be stored twice. The node and the client's address are kept
    // once, in it (the future reads them from there).
    let mut closed = ClosedLog {
        node,
        topic: Arc::from(topic),
        started: std::time::Instant::now(),
        connected: false,
        admission,
    };
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        closed.connected = true;
        let mut conn = Connection::new(Upgrade::new(upgraded), MAX_INBOUND_MESSAGE);
        super::log::connection(
            &closed.node,
            "websocket connected",
            closed.admission.client(),
            &closed.topic,
            None,
        );
        // Boxed: the handshake's state is needed once and should not stay in the
        // (long-lived) session future; the same goes for status requests below.
        let Some(user_id) = Box::pin(authenticate(
            &mut conn,
            &closed.node,
            &closed.topic,
            meta,
            closed.admission.client(),
        ))
        .await
        else {
            return;
        };
        super::log::connection(
            &closed.node,
            "websocket authenticated",
            closed.admission.client(),
            &closed.topic,
            Some(user_id),
        );
        let subscription = closed.node.hub().subscribe(&closed.topic, user_id);
        // The hub's copy of the name, shared by the topic's sockets.
        closed.topic = subscription.shared_topic();
        closed
            .node
            .metrics()
            .authenticated
            .fetch_add(1, Ordering::Relaxed);
        // The hub only queues until auth_ok is out (a new outbox is the
        // session's); then it may write pushes into the socket itself.
        if let Some(socket) = conn.socket() {
            subscription.outbox().attach(socket);
        }
        // Boxed, as the rare paths below: its state would stay in the session
        // future.
        if Box::pin(write(&mut conn, &closed.node, None, &frames::auth_ok()))
            .await
            .is_err()
        {
            return;
        }
        subscription.outbox().release();
        let is_status_topic = &*closed.topic == STATUS_TOPIC;
        let outbox = subscription.outbox();
        let mut last_heard = Instant::now();
        let mut next_ping = last_heard + PING_INTERVAL;
        let mut last_status: Option<Instant> = None;
        // One timer for both the ping and the idle deadline, reset only when
        // the earlier of the two moves.
        let keepalive = tokio::time::sleep_until(next_ping);
        tokio::pin!(keepalive);

        loop {
            // Shutdown: the node wakes every outbox once the drain deadline
            // is set (`Node::stop`), so this check after each wake-up is
            // the session's signal, and no future of the node's token (72
            // bytes) stays in every idle socket's task. A session that
            // subscribed after that wake-up finds the deadline set here.
            if closed.node.drain_deadline().is_some() {
                Box::pin(flush_and_close(&mut conn, &closed.node, outbox)).await;
                return;
            }
            {
                let wake_at = next_ping.min(last_heard + IDLE_TIMEOUT);
                if keepalive.deadline() != wake_at {
                    keepalive.as_mut().reset(wake_at);
                }
            }
            tokio::select! {
                _ = outbox.ready() => {
                    // Until shutdown, which the top of the loop then takes
                    // over (an atomic read).
                    while closed.node.drain_deadline().is_none() {
                        match Box::pin(write_queued(&mut conn, &closed.node, outbox, fresh_now())).await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(error) => {
                                Box::pin(end_after(&mut conn, &closed.node, outbox, error)).await;
                                return;
                            }
                        }
                    }
                }
                inbound = conn.recv() => {
                    let inbound = match inbound {
                        Ok(inbound) => inbound,
                        Err(error) => {
                            Box::pin(read_failed(&mut conn, &closed.node, outbox, error)).await;
                            return;
                        }
                    };
                    last_heard = Instant::now();
                    match inbound {
                        Inbound::Ping(payload) => {
                            if !Box::pin(pong(&mut conn, &closed.node, outbox, &payload)).await {
                                return;
                            }
                            outbox.release();
                        }
                        Inbound::Close(code) => {
                            Box::pin(close_after(&mut conn, &closed.node, outbox, code)).await;
                            return;
                        }
                        Inbound::Text(text)
                            if is_status_topic
                                && wants_status(&text)
                                && last_status.is_none_or(|at| at.elapsed() >= STATUS_THROTTLE) =>
                        {
                            last_status = Some(Instant::now());
                            // Boxed: its state stays out of the session future.
                            if let Err(error) = Box::pin(answer_status(&mut conn, &closed.node, outbox)).await {
                                Box::pin(end_after(&mut conn, &closed.node, outbox, error)).await;
                                return;
                            }
                            outbox.release();
                        }
                        // Everything else after auth is ignored.
                        Inbound::Text(_) | Inbound::Binary(_) | Inbound::Pong => {}
                    }
                }
                () = &mut keepalive => {
                    let idle = Instant::now() >= last_heard + IDLE_TIMEOUT;
                    next_ping = Instant::now() + PING_INTERVAL;
                    if !Box::pin(ping_or_close_idle(&mut conn, &closed.node, outbox, idle)).await {
                        return;
                    }
                    outbox.release();
                }
            }
        }
    }
}

/// Logs the close (of an upgraded socket) and gives the admission slot
/// back when the session ends, however it ends (after the connection,
/// which is declared after it).
struct ClosedLog {
    node: Arc<Node>,
    topic: Arc<str>,
    started: std::time::Instant,
    connected: bool,
    /// The client's slot, and its address.
    admission: Admission,
}

impl Drop for ClosedLog {
    fn drop(&mut self) {
        if self.connected {
            super::log::closed(
                &self.node,
                self.admission.client(),
                &self.topic,
                self.started.elapsed(),
            );
        }
    }
}

// The rarely taken paths of the loop, each boxed where it is awaited so
// that its state stays out of the (long-lived) session future: an idle
// socket's memory is mostly that future.

/// Reading failed: the close code for it, unless a write is cut.
async fn read_failed(
    conn: &mut Connection,
    node: &Node,
    outbox: &Outbox,
    error: super::conn::ReadError,
) {
    if claim(conn, node, outbox).await.is_ok() {
        fail(conn, node, error).await;
    }
}

/// Answers a ping; false if the socket is done.
async fn pong(conn: &mut Connection, node: &Node, outbox: &Outbox, payload: &[u8]) -> bool {
    claim(conn, node, outbox).await.is_ok()
        && timeout(WRITE_TIMEOUT, conn.send_pong(payload))
            .await
            .is_ok_and(|r| r.is_ok())
}

/// The peer's close, answered.
async fn close_after(conn: &mut Connection, node: &Node, outbox: &Outbox, code: Option<u16>) {
    let (code, reason) = reply_to_close(code);
    if claim(conn, node, outbox).await.is_ok() {
        close_with(conn, code, reason).await;
    }
}

/// The keepalive timer: closes a socket silent past the idle timeout,
/// pings it otherwise; false if the socket is done.
async fn ping_or_close_idle(
    conn: &mut Connection,
    node: &Node,
    outbox: &Outbox,
    idle: bool,
) -> bool {
    if claim(conn, node, outbox).await.is_err() {
        return false;
    }
    if idle {
        node.metrics().idle_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("dropping a silent socket");
        close_with(conn, close::NORMAL, "idle timeout").await;
        return false;
    }
    timeout(WRITE_TIMEOUT, conn.send_ping())
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The node's status, as the status topic's sockets ask for it.
async fn answer_status(
    conn: &mut Connection,
    node: &Node,
    outbox: &Outbox,
) -> Result<(), WriteError> {
    let request = StatusRequest {
        uptime_seconds: true,
        ..Default::default()
    };
    let report = node.status(request).await;
    claim(conn, node, outbox).await?;
    write(conn, node, Some(outbox), &frames::status(&report)).await
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
