//! The ordered hand-off between publishers (the internal API, the Redis
//! subscriber) and the hub. One task drains the queue, so frames for a topic
//! reach every socket in the order they were published, and a publish call
//! only waits for a queue slot, never for sockets.
//!
//! The task yields after every delivery. The sockets a delivery woke are
//! then ahead of it in the runtime's queue, so a socket that keeps up is
//! written to between two deliveries and its outbox does not overflow,
//! however much work other sockets on the topic cause. Without this the
//! task handed out up to 128 publishes per turn (tokio's budget) while the
//! sessions waited behind the writes of sockets that never read: in the
//! loadgen's `stuck` scenario (1,000 of those, 3 readers, 2,000 publishes of
//! 10 KB) the readers got 43–98 % of the publishes even with the kernel's
//! send queues bounded, and all of them with the yield.
//!
//! Each publish is stamped when it is queued. One that is older than
//! `limits.max_frame_age` when the task takes it is not delivered: the run
//! of stale publishes at the front of the queue is counted as missed by
//! every socket of their topics (folded into their next `lagged`, counted
//! in `stale_frames`) in one pass, then the next fresh publish is
//! delivered. So a publish rate the node cannot fan out costs stale
//! publishes a counter each, not a backlog the sockets get seconds late.
//! Delivered frames keep the stamp: their time in an outbox counts from
//! the same moment.
//!
//! *Inline.* A publish to a topic with at most [`INLINE_MAX`] sockets on
//! this node, made while nothing is queued or being delivered, is
//! delivered by the publisher itself under the lock the task delivers
//! under: a few non-blocking writes, with no hand-off and no thread woken
//! (1,000 topics × 10 sockets at 500/s: 4.1 → 2.0 context switches of the
//! server per publish). A publish queued before it is never overtaken: the
//! count of queued publishes must be zero.
//!
//! *Held.* A publish for the task is accepted once it has its slot in the
//! queue: [`try_dispatch`](Dispatcher::try_dispatch) returns an
//! [`Accepted`] that holds the slot and hands the publish over when it is
//! dropped. The internal API answers first and drops it afterwards, so the
//! wake-up of a fan-out thread (which on a busy machine preempted the
//! internal thread before its answer went out: 1–5 ms for 8–16 % of the
//! publishes to a 10k topic) comes after the answer. While it is held it
//! counts as queued, so no later publish is delivered inline ahead of it;
//! held publishes reach the queue in the order they are dropped (the
//! internal API drops them in the order it answered them); the task's
//! drain at shutdown waits for them (tokio's `recv` after `close` waits
//! for outstanding slots).
//!
//! At shutdown the queue is closed (later publishes are refused, not
//! answered 200 and lost) and what it holds is still delivered, within the
//! drain window; then [`Dispatcher::drained`] resolves, which the sessions
//! wait for before their last flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Publishes waiting for the fan-out task before publishers wait.
const QUEUE: usize = 8_192;

/// A publish to a topic with at most this many sockets here is delivered
/// by the publisher itself when nothing is queued before it (a few writes:
/// less than the hand-off to the fan-out task costs).
pub const INLINE_MAX: usize = 64;

#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Queued>,
    drained: CancellationToken,
    shared: Arc<Shared>,
}

/// What the task and the publishers delivering inline share.
struct Shared {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Held by whoever delivers: the task, or a publisher inline.
    delivering: Mutex<()>,
    /// Publishes queued (or being queued) and not yet delivered; a
    /// publisher only delivers inline when this is 0, so never ahead of
    /// one accepted before it.
    queued: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data: a panic elsewhere leaves nothing broken.
        self.delivering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, queued: Queued) {
        let delivery = match queued.target {
            Target::Topic(topic) => {
                self.hub
                    .deliver_accepted(&topic, &queued.frame, queued.accepted)
            }
            Target::Everyone => self
                .hub
                .deliver_all_accepted(&queued.frame, queued.accepted),
        };
        self.count(delivery);
    }

    fn count(&self, delivery: crate::hub::Delivery) {
        let metrics = &self.metrics;
        metrics
            .deliveries
            .fetch_add(delivery.recipients as u64, Ordering::Relaxed);
        metrics
            .written_through
            .fetch_add(delivery.written as u64, Ordering::Relaxed);
        if delivery.dropped > 0 {
            metrics
                .dropped_frames
                .fetch_add(delivery.dropped as u64, Ordering::Relaxed);
        }
        if delivery.stale > 0 {
            metrics
                .stale_frames
                .fetch_add(delivery.stale, Ordering::Relaxed);
        }
    }
}

/// Takes back a publish's place in [`Shared::queued`] if it never got a
/// slot in the queue (refused, or the publisher's future dropped while
/// waiting).
struct Place<'a> {
    shared: &'a Shared,
    reserved: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.reserved {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A publish the dispatcher took: delivered already (inline), or holding
/// its slot in the queue, in which case dropping it hands it to the
/// fan-out task (see the module text, *Held*). It is never lost: however
/// it is dropped (a task aborted with its runtime included), the publish
/// goes into its slot.
#[must_use = "dropping it hands the publish to the fan-out task; keep it only to do that later"]
pub struct Accepted {
    held: Option<(mpsc::OwnedPermit<Queued>, Queued)>,
}

impl Accepted {
    fn delivered() -> Self {
        Accepted { held: None }
    }

    /// Whether dropping it still hands a publish to the fan-out task.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Hands a held publish to the fan-out task now.
    pub fn hand_over(&mut self) {
        if let Some((permit, queued)) = self.held.take() {
            permit.send(queued);
        }
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// The queue is closed: the node is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Who a frame is for.
enum Target {
    Topic(String),
    /// Every socket on this node (a notice such as `resync`).
    Everyone,
}

/// A publish waiting for the fan-out task, stamped when it was queued.
struct Queued {
    target: Target,
    frame: Frame,
    accepted: Instant,
}

/// Publishes that went stale in the queue, per target: counted as missed
/// by every socket of the target instead of delivered.
#[derive(Default)]
struct Misses {
    topics: HashMap<String, u64>,
    everyone: u64,
}

impl Misses {
    fn add(&mut self, target: Target) {
        match target {
            Target::Topic(topic) => *self.topics.entry(topic).or_insert(0) += 1,
            Target::Everyone => self.everyone += 1,
        }
    }

    /// Folds them into the sockets' next lag notices; counts them as stale.
    fn apply(self, hub: &Hub, metrics: &Metrics) {
        let mut stale = 0u64;
        for (topic, n) in self.topics {
            stale += hub.miss(&topic, n);
        }
        if self.everyone > 0 {
            stale += hub.miss_all(self.everyone);
        }
        if stale > 0 {
            metrics.stale_frames.fetch_add(stale, Ordering::Relaxed);
        }
    }
}

impl Dispatcher {
    /// The dispatcher and the fan-out task to spawn. After `shutdown`, the
    /// task delivers what is queued for at most `drain_window`.
    ///
    /// Bounded staleness holds from the moment a publish is queued here: a
    /// publish that is already older than the hub's `max_frame_age` when
    /// the task takes it is not delivered; every socket of its topic counts
    /// it as missed in its next `lagged` notice (and `stale_frames`). A
    /// delivered frame keeps its stamp, so its time in an outbox counts
    /// from the same moment. Not applied to the drain at shutdown.
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        drain_window: Duration,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
        let drained = CancellationToken::new();
        let done = drained.clone();
        let shared = Arc::new(Shared {
            hub,
            metrics,
            delivering: Mutex::new(()),
            queued: AtomicUsize::new(0),
        });
        let task_shared = Arc::clone(&shared);
        let task = async move {
            // Resolves `drained` however the task ends, a panic included.
            let _done = done.drop_guard();
            let shared = task_shared;
            // Stamps only go forward in queue order (two publishers may
            // stamp in one order and queue in the other), so that frames
            // in an outbox go stale front first.
            let mut last: Option<Instant> = None;
            let mut forward = move |mut queued: Queued| {
                let at = last.map_or(queued.accepted, |last| last.max(queued.accepted));
                last = Some(at);
                queued.accepted = at;
                queued
            };
            // Delivers under the lock, then gives the places back.
            let finish = |fresh: Option<Queued>, misses: Misses, taken: usize| {
                let _delivering = shared.lock();
                misses.apply(&shared.hub, &shared.metrics);
                if let Some(queued) = fresh {
                    shared.deliver(queued);
                }
                shared.queued.fetch_sub(taken, Ordering::SeqCst);
            };
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.cancelled() => None,
                };
                let Some(next) = next else { break };
                let mut queued = forward(next);
                // The run of publishes at the front that waited too long
                // (bounded: whatever is queued after this clock read is
                // fresh) is counted, not delivered, before the next fresh
                // one goes out; the sockets' lag notices then come first.
                let now = Instant::now();
                let mut misses = Misses::default();
                let mut fresh = None;
                let mut taken = 1;
                loop {
                    if shared.hub.is_fresh(queued.accepted, now) {
                        fresh = Some(queued);
                        break;
                    }
                    misses.add(queued.target);
                    match rx.try_recv() {
                        Ok(next) => {
                            queued = forward(next);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
                finish(fresh, misses, taken);
                tokio::task::yield_now().await;
            }
            rx.close();
            let deadline = Instant::now() + drain_window;
            while let Some(queued) = rx.recv().await {
                if Instant::now() >= deadline {
                    let left = 1 + std::iter::from_fn(|| rx.try_recv().ok()).count();
                    tracing::warn!(
                        publishes = left,
                        "shutdown: accepted publishes left undelivered at the drain deadline"
                    );
                    break;
                }
                finish(Some(forward(queued)), Misses::default(), 1);
                tokio::task::yield_now().await;
            }
            // A publisher that began an inline delivery before the queue
            // closed is done before `drained` resolves.
            drop(shared.lock());
        };
        (
            Dispatcher {
                tx,
                drained,
                shared,
            },
            task,
        )
    }

    fn queue(&self, target: Target, frame: Frame) -> Queued {
        Queued {
            target,
            frame,
            accepted: Instant::now(),
        }
    }

    /// Takes a frame for every socket on `topic` on this node; refused
    /// once shutdown has begun. A topic with at most [`INLINE_MAX`]
    /// sockets here is delivered to at once, by the caller, when nothing
    /// is queued before it (no hand-off to the task, no thread woken).
    /// Otherwise the publish has its slot in the queue and goes to the
    /// task when the [`Accepted`] is dropped.
    pub async fn try_dispatch(&self, topic: String, frame: Frame) -> Result<Accepted, Closed> {
        if self.inline(&topic, &frame) {
            return Ok(Accepted::delivered());
        }
        self.send(Target::Topic(topic), frame).await
    }

    /// Delivers now if the topic is small, nothing is queued or being
    /// delivered, and the queue is open; false if it did not.
    fn inline(&self, topic: &str, frame: &Frame) -> bool {
        let shared = &self.shared;
        let Ok(_delivering) = shared.delivering.try_lock() else {
            return false;
        };
        // Under the lock: the task closes the queue, then takes the lock
        // once more before `drained`, so this delivery is not lost.
        if self.tx.is_closed() || shared.queued.load(Ordering::SeqCst) != 0 {
            return false;
        }
        match shared
            .hub
            .deliver_small(topic, frame, Instant::now(), INLINE_MAX)
        {
            Some(delivery) => {
                shared.count(delivery);
                true
            }
            None => false,
        }
    }

    /// Waits for a slot in the queue; the publish goes into it when the
    /// returned [`Accepted`] is dropped.
    async fn send(&self, target: Target, frame: Frame) -> Result<Accepted, Closed> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let mut place = Place {
            shared: &self.shared,
            reserved: false,
        };
        let permit = self.tx.clone().reserve_owned().await.map_err(|_| Closed)?;
        place.reserved = true;
        Ok(Accepted {
            held: Some((permit, self.queue(target, frame))),
        })
    }

    /// [`try_dispatch`](Self::try_dispatch) for callers with no one to tell
    /// (the cluster's subscriber): after shutdown nothing is delivered.
    pub async fn dispatch(&self, topic: String, frame: Frame) {
        let _ = self.try_dispatch(topic, frame).await;
    }

    /// Queues a frame for every socket on this node, in order with the
    /// publishes queued before it.
    pub async fn broadcast(&self, frame: Frame) {
        let _ = self.send(Target::Everyone, frame).await;
    }

    /// Resolves once the task has ended: at shutdown, after every frame
    /// queued before it reached the hub (or the drain window ran out).
    pub fn drained(&self) -> WaitForCancellationFuture<'_> {
        self.drained.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Outgoing, Staleness};

    /// A dispatcher on `hub` with a 2 s drain window, and its task (not
    /// spawned: each test decides when it runs).
    fn dispatcher_on(
        hub: &Arc<Hub>,
        metrics: &Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> (
        Dispatcher,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        Dispatcher::new(
            Arc::clone(hub),
            Arc::clone(metrics),
            shutdown.clone(),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn at_shutdown_what_was_queued_is_delivered_and_later_frames_are_refused() {
        let hub = Hub::new(1_000);
        let socket = hub.subscribe("t", 1);
        let shutdown = CancellationToken::new();
        let (dispatcher, task) = dispatcher_on(&hub, &Arc::new(Metrics::default()), &shutdown);
        // Queued before the task runs (behind a notice, so none of it is
        // delivered inline), then shutdown: all of it still arrives.
        dispatcher.broadcast(Frame::from_static(b"notice")).await;
        for n in 0..500 {
            let frame = Frame::from(n.to_string());
            assert!(dispatcher
                .try_dispatch("t".to_string(), frame)
                .await
                .is_ok());
        }
        shutdown.cancel();
        let task = tokio::spawn(task);
        dispatcher.drained().await;
        task.await.expect("task");
        assert_eq!(
            socket.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(Frame::from_static(b"notice")))
        );
        for n in 0..500 {
            assert_eq!(
                socket.outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(Frame::from(n.to_string())))
            );
        }
        assert_eq!(socket.outbox().pop(Staleness::Keep), None);
        assert!(
            matches!(
                dispatcher
                    .try_dispatch("t".to_string(), Frame::from("late".to_string()))
                    .await,
                Err(Closed)
            ),
            "a publish after the drain is refused, not lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_stale_in_the_queue_are_counted_as_missed_then_fresh_ones_follow() {
        let hub = Hub::with_limits(1_000, Duration::from_secs(1));
        let a = hub.subscribe("t", 1);
        let b = hub.subscribe("t", 2);
        let other = hub.subscribe("u", 3);
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, task) = dispatcher_on(&hub, &metrics, &CancellationToken::new());
        let frame = |n: u32| Frame::from(n.to_string());
        // A notice first: what follows is queued behind it, not inline.
        dispatcher.broadcast(frame(100)).await;
        for n in 0..7 {
            dispatcher.dispatch("t".to_string(), frame(n)).await;
        }
        // The queue waits 1.5 s for the task: all of the above is stale.
        tokio::time::advance(Duration::from_millis(1_500)).await;
        for n in 7..10 {
            dispatcher.dispatch("t".to_string(), frame(n)).await;
        }
        let _task = tokio::spawn(task);
        while metrics.deliveries.load(Ordering::Relaxed) < 6 {
            tokio::task::yield_now().await;
        }
        for socket in [&a, &b] {
            let mut got = Vec::new();
            socket
                .outbox()
                .pop_batch(100, Staleness::DropAt(Instant::now()), |item| {
                    got.push(item)
                });
            assert_eq!(
                got,
                [
                    Outgoing::Lagged { missed: 8 },
                    Outgoing::Frame(frame(7)),
                    Outgoing::Frame(frame(8)),
                    Outgoing::Frame(frame(9)),
                ],
                "seven publishes and the notice for all, missed"
            );
        }
        assert_eq!(
            other.outbox().pop(Staleness::DropAt(Instant::now())),
            Some(Outgoing::Lagged { missed: 1 }),
            "the notice for every socket"
        );
        assert_eq!(other.outbox().pop(Staleness::Keep), None);
        assert_eq!(metrics.stale_frames.load(Ordering::Relaxed), 2 * 8 + 1);
        assert_eq!(metrics.deliveries.load(Ordering::Relaxed), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivered_frame_ages_from_when_it_was_queued() {
        let hub = Hub::with_limits(1_000, Duration::from_secs(1));
        let s = hub.subscribe("t", 1);
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, task) = dispatcher_on(&hub, &metrics, &CancellationToken::new());
        dispatcher.broadcast(Frame::from_static(b"notice")).await;
        dispatcher
            .dispatch("t".to_string(), Frame::from_static(b"0"))
            .await;
        // Taken by the task 0.6 s after they were queued: delivered.
        tokio::time::advance(Duration::from_millis(600)).await;
        let _task = tokio::spawn(task);
        while metrics.deliveries.load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.outbox().len(), 2);
        // 0.5 s later in the outbox they are 1.1 s old: stale.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            s.outbox().pop(Staleness::DropAt(Instant::now())),
            Some(Outgoing::Lagged { missed: 2 })
        );
    }

    #[tokio::test]
    async fn a_small_topic_is_delivered_inline_unless_something_is_queued_before_it() {
        let hub = Hub::new(1_000);
        let small = hub.subscribe("small", 1);
        let big: Vec<_> = (0..=INLINE_MAX as i64)
            .map(|id| hub.subscribe("big", id))
            .collect();
        let shutdown = CancellationToken::new();
        let (dispatcher, task) = dispatcher_on(&hub, &Arc::new(Metrics::default()), &shutdown);
        let frame = |text: &str| Frame::from(text.to_string());
        // No task running: a small topic's publish is in its outbox at once.
        dispatcher.dispatch("small".to_string(), frame("0")).await;
        assert_eq!(small.outbox().len(), 1, "delivered by the publisher");
        // A big topic's publish is queued for the task, and a small one
        // after it waits behind it (order), until the task runs.
        dispatcher.dispatch("big".to_string(), frame("b")).await;
        dispatcher.dispatch("small".to_string(), frame("1")).await;
        assert_eq!(small.outbox().len(), 1, "queued behind the big one");
        assert!(big[0].outbox().is_empty());
        let task = tokio::spawn(task);
        while small.outbox().len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(big[INLINE_MAX].outbox().len(), 1);
        // Nothing queued any more: inline again.
        dispatcher.dispatch("small".to_string(), frame("2")).await;
        assert_eq!(small.outbox().len(), 3);
        for want in ["0", "1", "2"] {
            assert_eq!(
                small.outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(frame(want)))
            );
        }
        // After shutdown nothing is accepted, inline or not.
        shutdown.cancel();
        dispatcher.drained().await;
        task.await.expect("task");
        assert!(matches!(
            dispatcher
                .try_dispatch("small".to_string(), frame("late"))
                .await,
            Err(Closed)
        ));
        assert!(small.outbox().is_empty());
    }

    /// Yields to the runtime a few times: what can run, runs.
    async fn settle() {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn held_publishes_go_out_when_dropped_in_that_order_and_none_inline_before() {
        let hub = Hub::new(1_000);
        let small = hub.subscribe("small", 0);
        let big: Vec<_> = (1..=INLINE_MAX as i64 + 1)
            .map(|id| hub.subscribe("big", id))
            .collect();
        let shutdown = CancellationToken::new();
        let (dispatcher, task) = dispatcher_on(&hub, &Arc::new(Metrics::default()), &shutdown);
        let task = tokio::spawn(task);
        let frame = |text: &str| Frame::from(text.to_string());
        let take = |topic: &str, text: &str| {
            let dispatcher = dispatcher.clone();
            let (topic, frame) = (topic.to_string(), frame(text));
            async move { dispatcher.try_dispatch(topic, frame).await.expect("open") }
        };
        let first = take("big", "1").await;
        assert!(first.is_held(), "a big topic's publish waits for the task");
        let second = take("small", "s").await;
        assert!(second.is_held(), "not inline while one is held before it");
        let third = take("big", "2").await;
        settle().await;
        assert!(big[0].outbox().is_empty() && small.outbox().is_empty());
        // Shutdown while they are held: the drain waits for them.
        shutdown.cancel();
        settle().await;
        assert!(!task.is_finished(), "the drain waits for held slots");
        drop(first);
        drop(second);
        drop(third);
        dispatcher.drained().await;
        task.await.expect("task");
        for want in ["1", "2"] {
            assert_eq!(
                big[0].outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(frame(want)))
            );
        }
        assert_eq!(
            small.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(frame("s")))
        );
    }

    #[tokio::test]
    async fn a_held_publish_dropped_with_an_aborted_task_is_delivered() {
        let hub = Hub::new(1_000);
        let sockets: Vec<_> = (0..=INLINE_MAX as i64)
            .map(|id| hub.subscribe("big", id))
            .collect();
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, task) = dispatcher_on(&hub, &metrics, &CancellationToken::new());
        let _task = tokio::spawn(task);
        let held = dispatcher
            .try_dispatch("big".to_string(), Frame::from_static(b"x"))
            .await
            .expect("open");
        // The holder never gets to drop it itself (as when a runtime goes
        // away with the task that was to hand it over).
        let holder = tokio::spawn(async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        settle().await;
        assert_eq!(metrics.deliveries.load(Ordering::Relaxed), 0);
        holder.abort();
        let delivered = async {
            while metrics.deliveries.load(Ordering::Relaxed) < sockets.len() as u64 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), delivered)
            .await
            .expect("handed over when its holder was dropped");
        for socket in &sockets {
            assert_eq!(
                socket.outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(Frame::from_static(b"x")))
            );
        }
    }
}
