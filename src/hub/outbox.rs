//! The bounded queue between the hub and one socket's session task: the
//! hub pushes (dropping the oldest frame when full, and counting it), the
//! session pops, a lag notice first when frames were dropped.
//!
//! Each queued frame carries the moment it goes stale (queued at +
//! `limits.max_frame_age`, set once per publish by the hub). A pop that
//! finds stale frames at the front drops them instead of handing them out,
//! counts them into the same `missed` as the frames a full queue pushed
//! out, and reports them in the lag notice it hands out first: a socket
//! that fell behind gets `lagged` and then fresh frames, never a backlog
//! of frames older than the bound.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Frame;

/// The bounded queue between the hub and one socket's session task.
pub struct Outbox {
    queue: Mutex<Pending>,
    ready: Notify,
}

struct Pending {
    /// Each frame with the moment it goes stale.
    frames: VecDeque<(Frame, Instant)>,
    /// Frames dropped since the session last took the count.
    missed: u64,
}

/// How a pop treats frames that waited too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// Frames stale at this moment are dropped and reported as missed.
    DropAt(Instant),
    /// Every queued frame is handed out (the last flush at shutdown, which
    /// writes what the node accepted).
    Keep,
}

/// What one pop did besides handing out items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    /// Items handed out (a lag notice counts as one).
    pub items: usize,
    /// Frames dropped by this pop because they were stale.
    pub stale: u64,
}

/// What the session writes next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// `missed` older frames were dropped before the frames that follow.
    Lagged {
        missed: u64,
    },
    Frame(Frame),
}

impl Outbox {
    pub(super) fn new() -> Self {
        Outbox {
            queue: Mutex::new(Pending {
                frames: VecDeque::new(),
                missed: 0,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame that goes stale at `stale_at` (the hub's capacity
    /// applies to every outbox); returns true if an older frame was dropped
    /// for it.
    pub(super) fn push(&self, frame: Frame, stale_at: Instant, capacity: usize) -> bool {
        let dropped = {
            let mut pending = self.lock();
            let dropped = if pending.frames.len() >= capacity {
                pending.frames.pop_front();
                pending.missed += 1;
                true
            } else {
                false
            };
            pending.frames.push_back((frame, stale_at));
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The next thing to write, if any: a lag notice first when frames were
    /// dropped (stale ones included, per `staleness`).
    pub fn pop(&self, staleness: Staleness) -> Option<Outgoing> {
        let mut next = None;
        self.pop_batch(1, staleness, |item| next = Some(item));
        next
    }

    /// Up to `max` things to write, in order, taken under one lock (a lag
    /// notice first when frames were dropped); stale frames at the front are
    /// dropped first and counted in that notice.
    pub fn pop_batch(
        &self,
        max: usize,
        staleness: Staleness,
        mut each: impl FnMut(Outgoing),
    ) -> Taken {
        let mut pending = self.lock();
        let mut taken = Taken::default();
        if max == 0 {
            return taken;
        }
        if let Staleness::DropAt(now) = staleness {
            // In queue order, so the stale ones are at the front.
            while pending.frames.front().is_some_and(|(_, at)| *at <= now) {
                pending.frames.pop_front();
                taken.stale += 1;
            }
            pending.missed += taken.stale;
        }
        if pending.missed > 0 {
            let missed = std::mem::take(&mut pending.missed);
            each(Outgoing::Lagged { missed });
            taken.items += 1;
        }
        while taken.items < max {
            let Some((frame, _)) = pending.frames.pop_front() else {
                break;
            };
            each(Outgoing::Frame(frame));
            taken.items += 1;
        }
        if pending.frames.is_empty() && pending.frames.capacity() > 16 {
            // Give back what a burst made the queue grow to.
            pending.frames = VecDeque::new();
        }
        taken
    }

    /// Resolves when frames were queued since the last call (cancel-safe).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// True while frames dropped for lack of room have not been reported
    /// yet: the queue overflowed since the session last took from it.
    pub fn is_lagging(&self) -> bool {
        self.lock().missed > 0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
