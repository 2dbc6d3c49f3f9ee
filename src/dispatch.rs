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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Frame, Hub};
use crate::metrics::Metrics;

/// Publishes waiting for the fan-out task before publishers wait.
const QUEUE: usize = 8_192;

#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<(Target, Frame)>,
}

/// Who a frame is for.
enum Target {
    Topic(String),
    /// Every socket on this node (a notice such as `resync`).
    Everyone,
}

impl Dispatcher {
    /// The dispatcher and the fan-out task to spawn.
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<(Target, Frame)>(QUEUE);
        let task = async move {
            loop {
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.cancelled() => None,
                };
                let Some((target, frame)) = next else { return };
                let delivery = match target {
                    Target::Topic(topic) => hub.deliver(&topic, &frame),
                    Target::Everyone => hub.deliver_all(&frame),
                };
                metrics
                    .deliveries
                    .fetch_add(delivery.recipients as u64, Ordering::Relaxed);
                if delivery.dropped > 0 {
                    metrics
                        .dropped_frames
                        .fetch_add(delivery.dropped as u64, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        };
        (Dispatcher { tx }, task)
    }

    /// Queues a frame for every socket on `topic` on this node.
    pub async fn dispatch(&self, topic: String, frame: Frame) {
        // Fails only after shutdown, when nothing is delivered any more.
        let _ = self.tx.send((Target::Topic(topic), frame)).await;
    }

    /// Queues a frame for every socket on this node, in order with the
    /// publishes queued before it.
    pub async fn broadcast(&self, frame: Frame) {
        let _ = self.tx.send((Target::Everyone, frame)).await;
    }
}
