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
//! At shutdown the queue is closed (later publishes are refused, not
//! answered 200 and lost) and what it holds is still delivered, within the
//! drain window; then [`Dispatcher::drained`] resolves, which the sessions
//! wait for before their last flush.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Publishes waiting for the fan-out task before publishers wait.
const QUEUE: usize = 8_192;

#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Queued>,
    drained: CancellationToken,
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
        let task = async move {
            // Resolves `drained` however the task ends, a panic included.
            let _done = done.drop_guard();
            let max_age = hub.max_frame_age();
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
            let deliver = |queued: Queued| {
                let delivery = match queued.target {
                    Target::Topic(topic) => {
                        hub.deliver_accepted(&topic, &queued.frame, queued.accepted)
                    }
                    Target::Everyone => hub.deliver_all_accepted(&queued.frame, queued.accepted),
                };
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
                loop {
                    if queued
                        .accepted
                        .checked_add(max_age)
                        .is_some_and(|at| at > now)
                    {
                        fresh = Some(queued);
                        break;
                    }
                    misses.add(queued.target);
                    match rx.try_recv() {
                        Ok(next) => queued = forward(next),
                        Err(_) => break,
                    }
                }
                misses.apply(&hub, &metrics);
                if let Some(queued) = fresh {
                    deliver(queued);
                }
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
                deliver(forward(queued));
                tokio::task::yield_now().await;
            }
        };
        (Dispatcher { tx, drained }, task)
    }

    fn queue(&self, target: Target, frame: Frame) -> Queued {
        Queued {
            target,
            frame,
            accepted: Instant::now(),
        }
    }

    /// Queues a frame for every socket on `topic` on this node; refused
    /// once shutdown has begun.
    pub async fn try_dispatch(&self, topic: String, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send(self.queue(Target::Topic(topic), frame))
            .await
            .map_err(|_| Closed)
    }

    /// [`try_dispatch`](Self::try_dispatch) for callers with no one to tell
    /// (the cluster's subscriber): after shutdown nothing is delivered.
    pub async fn dispatch(&self, topic: String, frame: Frame) {
        let _ = self.try_dispatch(topic, frame).await;
    }

    /// Queues a frame for every socket on this node, in order with the
    /// publishes queued before it.
    pub async fn broadcast(&self, frame: Frame) {
        let _ = self.tx.send(self.queue(Target::Everyone, frame)).await;
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

    #[tokio::test]
    async fn at_shutdown_what_was_queued_is_delivered_and_later_frames_are_refused() {
        let hub = Hub::new(1_000);
        let socket = hub.subscribe("t", 1);
        let shutdown = CancellationToken::new();
        let (dispatcher, task) = Dispatcher::new(
            Arc::clone(&hub),
            Arc::new(Metrics::default()),
            shutdown.clone(),
            Duration::from_secs(2),
        );
        // Queued before the task runs, then shutdown: all of it still arrives.
        for n in 0..500 {
            let frame = Frame::from(n.to_string());
            assert_eq!(
                dispatcher.try_dispatch("t".to_string(), frame).await,
                Ok(())
            );
        }
        shutdown.cancel();
        let task = tokio::spawn(task);
        dispatcher.drained().await;
        task.await.expect("task");
        for n in 0..500 {
            assert_eq!(
                socket.outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(Frame::from(n.to_string())))
            );
        }
        assert_eq!(socket.outbox().pop(Staleness::Keep), None);
        assert_eq!(
            dispatcher
                .try_dispatch("t".to_string(), Frame::from("late".to_string()))
                .await,
            Err(Closed),
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
        let (dispatcher, task) = Dispatcher::new(
            Arc::clone(&hub),
            Arc::clone(&metrics),
            CancellationToken::new(),
            Duration::from_secs(2),
        );
        let frame = |n: u32| Frame::from(n.to_string());
        for n in 0..7 {
            dispatcher.dispatch("t".to_string(), frame(n)).await;
        }
        dispatcher.broadcast(frame(100)).await;
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
        let (dispatcher, task) = Dispatcher::new(
            Arc::clone(&hub),
            Arc::clone(&metrics),
            CancellationToken::new(),
            Duration::from_secs(2),
        );
        dispatcher
            .dispatch("t".to_string(), Frame::from_static(b"0"))
            .await;
        // Taken by the task 0.6 s after it was queued: delivered.
        tokio::time::advance(Duration::from_millis(600)).await;
        let _task = tokio::spawn(task);
        while metrics.deliveries.load(Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        // 0.5 s later in the outbox it is 1.1 s old: stale.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            s.outbox().pop(Staleness::DropAt(Instant::now())),
            Some(Outgoing::Lagged { missed: 1 })
        );
    }
}
