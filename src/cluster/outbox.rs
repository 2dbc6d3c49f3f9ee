//! Envelopes on their way to Redis: a bounded queue drained in order by one
//! task. A publish that Redis does not take (a blip, a failover) is retried
//! with backoff, still in order, for up to the replay window; what waited
//! longer, or did not fit, is dropped and counted. The publisher is never
//! blocked for longer than [`HANDOVER_WAIT`]: in cluster mode it waits
//! until the broker took its envelope (as the Go worker answers a publish
//! after its `PUBLISH`), so a client that saw the answer and then opens a
//! socket on another node does not get that publish there; while Redis is
//! away, or slow, it does not wait.

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
/// The longest a publish waits for its envelope to be taken by the broker.
pub const HANDOVER_WAIT: Duration = Duration::from_millis(100);

/// One envelope: when it was queued, its number, its text.
type Queued = (Instant, u64, String);

pub struct Outbox {
    /// Numbers envelopes in queue order (the lock makes number and send one
    /// step for concurrent publishers).
    tx: std::sync::Mutex<(u64, mpsc::Sender<Queued>)>,
    /// The publisher task's end; behind a lock so that a restarted task
    /// takes it up again.
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    /// The number of the last envelope the broker took (or that was
    /// dropped as too old): everything queued before it is done.
    done: tokio::sync::watch::Sender<u64>,
    failed: Throttled,
}

impl Outbox {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        Outbox {
            tx: std::sync::Mutex::new((0, tx)),
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            done: tokio::sync::watch::Sender::new(0),
            failed: Throttled::new(Duration::from_secs(10)),
        }
    }

    /// The envelope's number, or `None` if the outbox is full (the envelope
    /// is dropped).
    pub fn push(&self, envelope: String) -> Option<u64> {
        let mut guard = self.tx.lock().ok()?;
        let (last, tx) = &mut *guard;
        let number = *last + 1;
        tx.try_send((Instant::now(), number, envelope)).ok()?;
        *last = number;
        Some(number)
    }

    /// Resolves once envelope `number` is done (taken by the broker, or
    /// dropped as too old), or after `within`.
    pub async fn handed_over(&self, number: u64, within: Duration) {
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(within, done.wait_for(|done| *done >= number)).await;
    }

    pub fn len(&self) -> usize {
        self.tx
            .lock()
            .map_or(0, |guard| CAPACITY - guard.1.capacity())
    }
}

impl Cluster {
    pub(super) async fn publish_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let rx = Arc::clone(&self.outbox.rx);
        let mut rx = rx.lock().await;
        let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = shutdown.cancelled() => return,
            };
            if received == 0 {
                return;
            }
            let last = batch.last().map_or(0, |(_, number, _)| *number);
            let (mut queued, mut texts): (Vec<Instant>, Vec<String>) =
                batch.drain(..).map(|(at, _, text)| (at, text)).unzip();
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
                    self.outbox.done.send_replace(last);
                    break;
                }
                match self.broker.publish(&texts).await {
                    Ok(()) => {
                        self.counters
                            .envelopes_published
                            .fetch_add(texts.len() as u64, Ordering::Relaxed);
                        self.outbox.done.send_replace(last);
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
