//! Envelopes on their way to Redis: a bounded queue drained in order by one
//! task. A publish that Redis does not take (a blip, a failover) is retried
//! with backoff, still in order, for up to the replay window; what waited
//! longer, or did not fit, is dropped and counted. The publisher is never
//! blocked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::telemetry::Throttled;

/// Envelopes waiting for Redis before new ones are dropped (and counted).
const CAPACITY: usize = 16_384;
/// An envelope older than this is not sent any more: it would reach other
/// nodes' sockets too late to matter, and out of step with what they got
/// since.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);
const BATCH: usize = 128;
const RETRY_START: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(1);

pub struct Outbox {
    tx: mpsc::Sender<(Instant, String)>,
    /// The publisher task's end; behind a lock so that a restarted task
    /// takes it up again.
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<(Instant, String)>>>,
    failed: Throttled,
}

impl Outbox {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Outbox {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            failed: Throttled::new(Duration::from_secs(10)),
        }
    }

    /// False if the outbox is full (the envelope is dropped).
    pub fn push(&self, envelope: String) -> bool {
        self.tx.try_send((Instant::now(), envelope)).is_ok()
    }

    pub fn len(&self) -> usize {
        CAPACITY - self.tx.capacity()
    }
}

impl Cluster {
    pub(super) async fn publish_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let rx = Arc::clone(&self.outbox.rx);
        let mut rx = rx.lock().await;
        let mut batch: Vec<(Instant, String)> = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = shutdown.cancelled() => return,
            };
            if received == 0 {
                return;
            }
            let (mut queued, mut texts): (Vec<Instant>, Vec<String>) = batch.drain(..).unzip();
            let mut retry = RETRY_START;
            loop {
                // Oldest first: the expired ones are a prefix.
                let expired = queued
                    .iter()
                    .take_while(|at| at.elapsed() > REPLAY_WINDOW)
                    .count();
                if expired > 0 {
                    queued.drain(..expired);
                    texts.drain(..expired);
                    self.counters
                        .envelopes_dropped
                        .fetch_add(expired as u64, Ordering::Relaxed);
                }
                if texts.is_empty() {
                    break;
                }
                match self.broker.publish(&texts).await {
                    Ok(()) => {
                        self.counters
                            .envelopes_published
                            .fetch_add(texts.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        self.counters
                            .publish_retries
                            .fetch_add(1, Ordering::Relaxed);
                        self.outbox.failed.warn(|repeats| {
                            tracing::warn!(%error, envelopes = texts.len(), waiting = self.outbox.len(), repeats, "could not publish to redis; retrying in order");
                        });
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        retry = (retry * 2).min(RETRY_CAP);
                    }
                }
            }
        }
    }
}
