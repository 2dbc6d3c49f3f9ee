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
//!
//! A pending write holds no thread: the socket is non-blocking and the
//! session task is parked on it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::super::conn::{Connection, BATCH};
use crate::frames;
use crate::hub::{Frame, Outbox, Outgoing};
use crate::node::Node;

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
pub async fn write_queued(
    conn: &mut Connection,
    node: &Node,
    outbox: &Outbox,
) -> Result<usize, WriteError> {
    let mut batch = Batch::Empty;
    let count = outbox.pop_batch(BATCH, |item| batch.push(frame_for(item, node)));
    write_all(conn, node, Some(outbox), batch.frames()).await?;
    Ok(count)
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

/// What the session writes for an outbox item.
fn frame_for(item: Outgoing, node: &Node) -> Frame {
    match item {
        Outgoing::Frame(frame) => frame,
        Outgoing::Lagged { missed } => {
            node.metrics()
                .lagged_notices
                .fetch_add(1, Ordering::Relaxed);
            frames::lagged(missed)
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
    let limit = sleep_until(started + WRITE_TIMEOUT);
    let check = sleep_until(started + CHECK_EVERY);
    tokio::pin!(limit, check);
    loop {
        tokio::select! {
            result = conn.flush() => return result.map_err(|_| WriteError::Gone),
            () = &mut limit => {
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
                if now - progress_at >= STALL_TIMEOUT && outbox.is_some_and(Outbox::is_lagging) {
                    node.metrics().stalled_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("closing a socket that takes nothing while its queue overflows");
                    return Err(WriteError::Stalled);
                }
                check.as_mut().reset(now + CHECK_EVERY);
            }
        }
    }
}
