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
//!
//! *Write-through.* Once the session has attached its socket and released
//! it (after `auth_ok`), a push that finds the queue empty and the session
//! not writing writes the frame into the socket itself: one non-blocking
//! `write` of the whole WebSocket frame (built once per publish), under this
//! outbox's lock, and no task is woken. Only when the socket does not take
//! it whole is the frame queued (or, after a short write, its unsent tail
//! kept to go out first) and the session woken. Whoever writes holds the
//! lock or the `busy` mark, so the bytes of two frames never mix, and
//! frames leave in the order they were pushed.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Frame;

/// The bounded queue between the hub and one socket's session task.
pub struct Outbox {
    queue: Mutex<Pending>,
}

struct Pending {
    /// Each frame with the moment it goes stale.
    frames: VecDeque<(Frame, Instant)>,
    /// Frames dropped since the session last took the count.
    /// (32 bits, saturating: with the flags below it keeps an idle
    /// socket's outbox in a 96-byte allocation.)
    missed: u32,
    /// What the socket did not take of a frame the hub wrote: it goes out
    /// before anything else (boxed: rare, and an idle socket pays 8 bytes).
    rest: Option<Box<Bytes>>,
    /// The socket, for write-through (none until the session attaches it).
    socket: Option<Arc<TcpStream>>,
    /// The session is writing, or has not released the socket yet: the hub
    /// only queues.
    busy: bool,
    /// Something was queued (or is to be written) since the session last
    /// looked: [`Outbox::ready`] resolves at once. With `waker`, the
    /// session's wake-up, kept under the same lock (a `Notify` and its
    /// `Notified` future would cost an idle socket ~100 bytes more).
    notified: bool,
    waker: Option<Waker>,
}

/// What one push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// An older frame was dropped for it (the queue was full).
    pub dropped: bool,
    /// The frame went straight into the socket, whole.
    pub written: bool,
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
    /// The unsent tail of a frame the hub began writing: raw bytes, first.
    Rest(Bytes),
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
                rest: None,
                socket: None,
                busy: true,
                notified: false,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame that goes stale at `stale_at` (the hub's capacity
    /// applies to every outbox), or writes it into the socket at once
    /// (write-through, see the module text); `wire` is the whole WebSocket
    /// frame (header and payload, built once per publish).
    pub(super) fn push(
        &self,
        frame: &Frame,
        wire: &Bytes,
        stale_at: Instant,
        capacity: usize,
    ) -> Pushed {
        let mut pushed = Pushed::default();
        let waker = {
            let mut pending = self.lock();
            if let Some(socket) = pending.writable() {
                match send(socket, wire) {
                    Ok(sent) if sent == wire.len() => {
                        pushed.written = true;
                        return pushed;
                    }
                    Ok(sent) => {
                        // Cut: the tail goes first, by the session.
                        pending.rest = Some(Box::new(wire.slice(sent..)));
                        let waker = pending.notify();
                        drop(pending);
                        wake(waker);
                        return pushed;
                    }
                    // Full (or failed: the session finds out itself).
                    Err(_) => {}
                }
            }
            if pending.frames.len() >= capacity {
                pending.frames.pop_front();
                pending.add_missed(1);
                pushed.dropped = true;
            }
            pending.frames.push_back((frame.clone(), stale_at));
            pending.notify()
        };
        wake(waker);
        pushed
    }

    /// `n` publishes for this socket were not queued at all (they waited
    /// too long in the fan-out queue): counted in the next lag notice,
    /// which also stops write-through until the session has written it.
    /// The frames still queued are older than those publishes, so stale
    /// too: they are dropped now and counted in the same notice (else a pop
    /// that read the clock a moment earlier could hand them out after the
    /// notice, out of order). Returns how many were. Wakes the session
    /// only when the count was zero (a waiting count is already its
    /// wake-up).
    pub(super) fn miss(&self, n: u64) -> u64 {
        let (waker, queued) = {
            let mut pending = self.lock();
            let first = pending.missed == 0;
            let queued = pending.frames.len() as u64;
            pending.frames.clear();
            pending.add_missed(n + queued);
            let waker = if first && n + queued > 0 {
                pending.notify()
            } else {
                None
            };
            (waker, queued)
        };
        wake(waker);
        queued
    }

    /// Wakes the session with nothing queued: it looks at the node's state
    /// (shutdown) on its way back to the wait.
    pub(super) fn nudge(&self) {
        let waker = self.lock().notify();
        wake(waker);
    }

    /// Gives the hub the socket for write-through; it is used once the
    /// session [`release`](Self::release)s it.
    pub fn attach(&self, socket: Arc<TcpStream>) {
        self.lock().socket = Some(socket);
    }

    /// The session is about to write on its own (a ping, a status frame,
    /// the close): the hub only queues from now on, until
    /// [`release`](Self::release). Returns the tail of a frame the hub cut,
    /// which must be written first.
    pub fn claim(&self) -> Option<Bytes> {
        let mut pending = self.lock();
        pending.busy = true;
        pending.rest.take().map(|rest| *rest)
    }

    /// The session's own write is done: the hub may write through again
    /// (it only does when nothing is queued; if something is, the session
    /// is woken to write it).
    pub fn release(&self) {
        let waker = {
            let mut pending = self.lock();
            pending.busy = false;
            let waiting =
                !pending.frames.is_empty() || pending.missed > 0 || pending.rest.is_some();
            if waiting {
                pending.notify()
            } else {
                None
            }
        };
        wake(waker);
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
        if let Some(rest) = pending.rest.take() {
            each(Outgoing::Rest(*rest));
            taken.items += 1;
        }
        if let Staleness::DropAt(now) = staleness {
            // In queue order, so the stale ones are at the front.
            while pending.frames.front().is_some_and(|(_, at)| *at <= now) {
                pending.frames.pop_front();
                taken.stale += 1;
            }
            pending.add_missed(taken.stale);
        }
        if pending.missed > 0 {
            let missed = u64::from(std::mem::take(&mut pending.missed));
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
        // The session writes what it took; once a pop finds nothing, its
        // writes are done and the hub may write through.
        pending.busy = taken.items > 0;
        taken
    }

    /// Resolves when frames were queued since the last call (cancel-safe).
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await;
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut pending = self.lock();
        if std::mem::take(&mut pending.notified) {
            return Poll::Ready(());
        }
        if !pending
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            pending.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// True while the hub would write a push into the socket itself.
    pub fn writes_through(&self) -> bool {
        self.lock().writable().is_some()
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

/// One non-blocking `send(2)` of `wire`, straight to the kernel.
///
/// Not through the runtime (`TcpStream::try_write`): that first reads the
/// socket's readiness in the runtime's I/O state, one more cache miss per
/// socket, 6.7 % of a 10k fan-out's CPU. Nothing is lost by going around
/// it: a full socket answers `WouldBlock` here, the frame is queued, and
/// the session's own write through the runtime then finds the socket full
/// too and waits for it as usual (the kernel signals space to whoever
/// asked last).
fn send(socket: &TcpStream, wire: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_with_flags(wire, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Wakes the session outside the lock.
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Pending {
    /// Marks the outbox ready; the session's waker, to wake once the lock
    /// is released.
    fn add_missed(&mut self, n: u64) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.missed = self.missed.saturating_add(n);
    }

    fn notify(&mut self) -> Option<Waker> {
        self.notified = true;
        self.waker.take()
    }

    /// The socket, if a push may go into it now: attached, released by the
    /// session, nothing queued or cut before it, no loss to report first.
    fn writable(&self) -> Option<&TcpStream> {
        match &self.socket {
            Some(socket)
                if !self.busy
                    && self.frames.is_empty()
                    && self.missed == 0
                    && self.rest.is_none() =>
            {
                Some(socket)
            }
            _ => None,
        }
    }
}
