//! Writing to one socket, each frame within its bounds. A frame the socket
//! takes at once costs nothing more (no timer); one it does not take is
//! waited for, checked every 500 ms:
//!
//! - *stalled*: the socket has taken no byte for [`STALL_TIMEOUT`] while its
//!   outbox overflowed (frames are being dropped for it). The session closes
//!   it with 1013. A slow socket keeps taking bytes and is only `lagged`; a
//!   stuck one costs its bounded outbox (and the kernel's bounded send
//!   queue, see `ws::UNSENT_LIMIT`) for 2–2.5 s, then nothing.
//! - *timed out*: one write not done within [`WRITE_TIMEOUT`].
//! - once shutdown has begun, the node's drain deadline.
//!
//! A pending write holds no thread: the socket is non-blocking and the
//! session task is parked on it. [`drain`] is the last flush at shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::super::conn::{Connection, BATCH};
use crate::frames;
use crate::hub::{Frame, Outbox, Outgoing, Staleness};
use crate::node::{Node, SHUTDOWN_DRAIN};

/// One write (a frame, or a batch of queued ones) must be done within this,
/// whatever the socket's queue.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A socket whose outbox overflows and that takes no byte for this long is
/// stuck, not slow.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The connection failed or the peer went away.
    Gone,
    /// Nothing taken for [`STALL_TIMEOUT`] while frames were dropped for it.
    Stalled,
    /// The write was not done within [`WRITE_TIMEOUT`].
    TimedOut,
    /// The shutdown drain deadline passed.
    Deadline,
}

/// Writes one text frame within its bounds; `outbox` is the socket's
/// queue, for the stall rule. Counts stalls and time-outs.
pub async fn write(
    conn: &mut Connection,
    node: &Node,
    outbox: Option<&Outbox>,
    frame: &Frame,
) -> Result<(), WriteError> {
    write_all(conn, node, outbox, std::slice::from_ref(frame)).await
}

/// Writes what the outbox holds, up to [`BATCH`] frames (in one write when
/// the socket takes them at once), within the bounds; how many there were
/// (0: the outbox was empty).
///
/// Frames that waited longer than `limits.max_frame_age` are dropped
/// instead (counted in `skywave_stale_frames_total` and in the lag notice
/// written first), unless `staleness` is [`Staleness::Keep`].
pub async fn write_queued(
    conn: &mut Connection,
    node: &Node,
    outbox: &Outbox,
    staleness: Staleness,
) -> Result<usize, WriteError> {
    let mut batch = Batch::Empty;
    let mut rest = None;
    let taken = outbox.pop_batch(BATCH, staleness, |item| match item {
        // Only ever first: the tail of a frame already partly sent.
        Outgoing::Rest(bytes) => rest = Some(bytes),
        Outgoing::Frame(frame) => batch.push(frame),
        Outgoing::Lagged { missed } => batch.push(lag_notice(missed, node)),
    });
    if taken.stale > 0 {
        node.metrics()
            .stale_frames
            .fetch_add(taken.stale, Ordering::Relaxed);
    }
    if let Some(rest) = rest {
        write_rest(conn, node, Some(outbox), &rest).await?;
    }
    write_all(conn, node, Some(outbox), batch.frames()).await?;
    Ok(taken.items)
}

/// Before a write of the session's own (a ping, a status frame, the
/// close): the hub stops writing through until [`Outbox::release`], and
/// the tail of a frame it cut goes out first.
pub async fn claim(conn: &mut Connection, node: &Node, outbox: &Outbox) -> Result<(), WriteError> {
    match outbox.claim() {
        Some(rest) => write_rest(conn, node, Some(outbox), &rest).await,
        None => Ok(()),
    }
}

/// The unsent tail of a frame the hub wrote in part, within the bounds.
async fn write_rest(
    conn: &mut Connection,
    node: &Node,
    outbox: Option<&Outbox>,
    rest: &bytes::Bytes,
) -> Result<(), WriteError> {
    match conn.start_raw(rest) {
        Ok(true) => Ok(()),
        Ok(false) => Box::pin(finish(conn, node, outbox)).await,
        Err(_) => Err(WriteError::Gone),
    }
}

/// Fresh frames only: the rule while the node runs.
pub fn fresh_now() -> Staleness {
    Staleness::DropAt(Instant::now())
}

async fn write_all(
    conn: &mut Connection,
    node: &Node,
    outbox: Option<&Outbox>,
    frames: &[Frame],
) -> Result<(), WriteError> {
    match conn.start_texts(frames) {
        Ok(true) => Ok(()),
        // Boxed: the slow path's timers stay out of the session future.
        Ok(false) => Box::pin(finish(conn, node, outbox)).await,
        Err(_) => Err(WriteError::Gone),
    }
}

/// Frames taken from an outbox at once; a single one needs no allocation.
enum Batch {
    Empty,
    One(Frame),
    Many(Vec<Frame>),
}

impl Batch {
    fn push(&mut self, frame: Frame) {
        *self = match std::mem::replace(self, Batch::Empty) {
            Batch::Empty => Batch::One(frame),
            Batch::One(first) => {
                let mut frames = Vec::with_capacity(BATCH);
                frames.extend([first, frame]);
                Batch::Many(frames)
            }
            Batch::Many(mut frames) => {
                frames.push(frame);
                Batch::Many(frames)
            }
        }
    }

    fn frames(&self) -> &[Frame] {
        match self {
            Batch::Empty => &[],
            Batch::One(frame) => std::slice::from_ref(frame),
            Batch::Many(frames) => frames,
        }
    }
}

/// The lag notice for `missed` frames, counted.
fn lag_notice(missed: u64, node: &Node) -> Frame {
    node.metrics()
        .lagged_notices
        .fetch_add(1, Ordering::Relaxed);
    frames::lagged(missed)
}

/// At shutdown: writes everything queued for the socket, waiting for the
/// fan-out task to hand over every publish accepted before the signal, until
/// the node's drain deadline. `Ok` when nothing was left behind.
pub async fn drain(conn: &mut Connection, node: &Node, outbox: &Outbox) -> Result<(), WriteError> {
    let deadline = node
        .drain_deadline()
        .unwrap_or_else(|| Instant::now() + SHUTDOWN_DRAIN);
    let fanout = node.fanout_drained();
    tokio::pin!(fanout);
    let mut fanout_done = false;
    loop {
        // What the node accepted goes out, however long it waited (bounded
        // by the drain deadline).
        while write_queued(conn, node, outbox, Staleness::Keep).await? > 0 {
            if Instant::now() >= deadline {
                return Err(WriteError::Deadline);
            }
        }
        // Empty after the fan-out task was done: every accepted frame is out.
        if fanout_done {
            return Ok(());
        }
        tokio::select! {
            () = &mut fanout => fanout_done = true,
            () = outbox.ready() => {}
            () = sleep_until(deadline) => return Err(WriteError::Deadline),
        }
    }
}

/// Waits for the rest of a frame the socket did not take at once.
async fn finish(
    conn: &mut Connection,
    node: &Node,
    outbox: Option<&Outbox>,
) -> Result<(), WriteError> {
    let started = Instant::now();
    let mut progress_at = started;
    let mut taken = conn.taken();
    let mut draining = node.drain_deadline();
    let limit = sleep_until(limit_for(started, draining));
    let check = sleep_until(started + CHECK_EVERY);
    let shutdown = node.shutdown().cancelled();
    tokio::pin!(limit, check, shutdown);
    loop {
        tokio::select! {
            result = conn.flush() => return result.map_err(|_| WriteError::Gone),
            () = &mut shutdown, if draining.is_none() => {
                draining = Some(node.drain_deadline().unwrap_or_else(|| Instant::now() + SHUTDOWN_DRAIN));
                limit.as_mut().reset(limit_for(started, draining));
            }
            () = &mut limit => {
                if draining.is_some_and(|deadline| Instant::now() >= deadline) {
                    return Err(WriteError::Deadline);
                }
                node.metrics().write_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("dropping a socket whose write did not complete in time");
                return Err(WriteError::TimedOut);
            }
            () = &mut check => {
                let now = Instant::now();
                if conn.taken() != taken {
                    taken = conn.taken();
                    progress_at = now;
                }
                // At shutdown the drain deadline alone applies.
                if draining.is_none()
                    && now - progress_at >= STALL_TIMEOUT
                    && outbox.is_some_and(Outbox::is_lagging)
                {
                    node.metrics().stalled_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("closing a socket that takes nothing while its queue overflows");
                    return Err(WriteError::Stalled);
                }
                check.as_mut().reset(now + CHECK_EVERY);
            }
        }
    }
}

/// The write time-out, or the drain deadline if that comes first.
fn limit_for(started: Instant, draining: Option<Instant>) -> Instant {
    let timeout = started + WRITE_TIMEOUT;
    draining.map_or(timeout, |deadline| deadline.min(timeout))
}
