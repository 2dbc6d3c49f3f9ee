//! The bounded queue between the hub and one socket's session task: the
//! hub pushes (dropping the oldest frame when full, and counting it), the
//! session pops, a lag notice first when frames were dropped.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Frame;

/// The bounded queue between the hub and one socket's session task.
pub struct Outbox {
    queue: Mutex<Pending>,
    ready: Notify,
}

struct Pending {
    frames: VecDeque<Frame>,
    /// Frames dropped since the session last took the count.
    missed: u64,
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

    /// Queues a frame (the hub's capacity applies to every outbox); returns
    /// true if an older frame was dropped for it.
    pub(super) fn push(&self, frame: Frame, capacity: usize) -> bool {
        let dropped = {
            let mut pending = self.lock();
            let dropped = if pending.frames.len() >= capacity {
                pending.frames.pop_front();
                pending.missed += 1;
                true
            } else {
                false
            };
            pending.frames.push_back(frame);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The next thing to write, if any: a lag notice first when frames were dropped.
    pub fn pop(&self) -> Option<Outgoing> {
        let mut pending = self.lock();
        if pending.missed > 0 {
            let missed = std::mem::take(&mut pending.missed);
            return Some(Outgoing::Lagged { missed });
        }
        let next = pending.frames.pop_front();
        if pending.frames.is_empty() && pending.frames.capacity() > 16 {
            // Give back what a burst made the queue grow to.
            pending.frames = VecDeque::new();
        }
        next.map(Outgoing::Frame)
    }

    /// Up to `max` things to write, in order, taken under one lock (a lag
    /// notice first when frames were dropped); returns how many.
    pub fn pop_batch(&self, max: usize, mut each: impl FnMut(Outgoing)) -> usize {
        let mut pending = self.lock();
        let mut count = 0;
        if pending.missed > 0 && max > 0 {
            let missed = std::mem::take(&mut pending.missed);
            each(Outgoing::Lagged { missed });
            count += 1;
        }
        while count < max {
            let Some(frame) = pending.frames.pop_front() else {
                break;
            };
            each(Outgoing::Frame(frame));
            count += 1;
        }
        if pending.frames.is_empty() && pending.frames.capacity() > 16 {
            pending.frames = VecDeque::new();
        }
        count
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
