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
//! At shutdown the queue is closed (later publishes are refused, not
//! answered 200 and lost) and what it holds is still delivered, within the
//! drain window; then [`Dispatcher::drained`] resolves, which the sessions
//! wait for before their last flush.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Publishes waiting for the fan-out task before publishers wait.
const QUEUE: usize = 8_192;

#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<(Target, Frame)>,
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

impl Dispatcher {
    /// The dispatcher and the fan-out task to spawn. After `shutdown`, the
    /// task delivers what is queued for at most `drain_window`.
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        drain_window: Duration,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<(Target, Frame)>(QUEUE);
        let drained = CancellationToken::new();
        let done = drained.clone();
        let task = async move {
            // Resolves `drained` however the task ends, a panic included.
            let _done = done.drop_guard();
            let deliver = |target: Target, frame: Frame| {
                let delivery = match target {
                    Target::Topic(topic) => hub.deliver(&topic, &frame),
                    Target::Everyone => hub.deliver_all(&frame),
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
            };
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.cancelled() => None,
                };
                let Some((target, frame)) = next else { break };
                deliver(target, frame);
                tokio::task::yield_now().await;
            }
            rx.close();
            let deadline = tokio::time::Instant::now() + drain_window;
            while let Some((target, frame)) = rx.recv().await {
                if tokio::time::Instant::now() >= deadline {
                    let left = 1 + std::iter::from_fn(|| rx.try_recv().ok()).count();
                    tracing::warn!(
                        publishes = left,
                        "shutdown: accepted publishes left undelivered at the drain deadline"
                    );
                    break;
                }
                deliver(target, frame);
                tokio::task::yield_now().await;
            }
        };
        (Dispatcher { tx, drained }, task)
    }

    /// Queues a frame for every socket on `topic` on this node; refused
    /// once shutdown has begun.
    pub async fn try_dispatch(&self, topic: String, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send((Target::Topic(topic), frame))
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
        let _ = self.tx.send((Target::Everyone, frame)).await;
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
}
