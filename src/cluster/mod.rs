//! Cluster membership over the broker: the supervised subscriber that
//! decides the node's mode, the ordered envelope outbox, and the heartbeat
//! (roster entry, status topic, pending registry write-backs).
//!
//! The mode is `cluster` exactly while the subscription is live and verified
//! (`PUBSUB NUMSUB`). It turns `degraded` only when the subscription is lost
//! (the stream ends, the subscriber's own pings fail twice or its connection
//! breaks) or Redis refuses connections: a slow or failed pooled command
//! never does. The cluster takes narrow handles (broker, registry,
//! dispatcher, hub, identity, tracker), never the node.

mod heartbeat;
mod outbox;
mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Health};
use crate::dispatch::Dispatcher;
use crate::hub::Hub;
use crate::registry::Registry;
use crate::roster::{ConfigMatch, Identity, RosterEntry};

/// How this node delivers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No `redis_url`: one node alone.
    Single,
    /// Subscribed and verified: publishes reach every node.
    Cluster,
    /// Configured for a cluster, but Redis is away: serving alone until it returns.
    Degraded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
            Mode::Degraded => "degraded",
        }
    }
}

/// What the cluster works with; each part is a narrow handle.
pub struct Parts {
    pub broker: Arc<Broker>,
    pub health: Arc<Health>,
    pub registry: Arc<Registry>,
    pub dispatcher: Dispatcher,
    pub hub: Arc<Hub>,
    pub identity: Arc<Identity>,
}

pub struct Cluster {
    broker: Arc<Broker>,
    health: Arc<Health>,
    registry: Arc<Registry>,
    dispatcher: Dispatcher,
    hub: Arc<Hub>,
    identity: Arc<Identity>,
    outbox: outbox::Outbox,
    /// Why the node is not in the cluster, for status (`redis_error`).
    last_error: Mutex<Option<String>>,
    counters: ClusterCounters,
}

/// Counters the metrics endpoint reports.
#[derive(Default)]
pub struct ClusterCounters {
    pub joins: AtomicU64,
    pub subscriber_restarts: AtomicU64,
    pub envelopes_received: AtomicU64,
    pub envelopes_malformed: AtomicU64,
    pub envelopes_published: AtomicU64,
    /// Envelopes never published: the outbox was full, or they waited
    /// longer than the replay window for Redis.
    pub envelopes_dropped: AtomicU64,
    /// Publish attempts that failed and were retried.
    pub publish_retries: AtomicU64,
    /// Cluster tasks that panicked and were restarted.
    pub task_panics: AtomicU64,
    /// `resync` notices sent to every socket after a (re)join that followed
    /// a time without subscription.
    pub resyncs: AtomicU64,
    /// Live roster entries whose fingerprint differs (a gauge).
    pub mismatches: AtomicU64,
}

/// One of the cluster's long-lived tasks, as `restarting` starts it.
type TaskFn = fn(
    Arc<Cluster>,
    CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Cluster {
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Cluster {
            broker: parts.broker,
            health: parts.health,
            registry: parts.registry,
            dispatcher: parts.dispatcher,
            hub: parts.hub,
            identity: parts.identity,
            outbox: outbox::Outbox::new(),
            last_error: Mutex::new(None),
            counters: ClusterCounters::default(),
        })
    }

    pub fn mode(&self) -> Mode {
        if self.health.is_connected() {
            Mode::Cluster
        } else {
            Mode::Degraded
        }
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// Commands that failed since start.
    pub fn command_failures(&self) -> u64 {
        self.broker.failures()
    }

    /// Hands an envelope to the outbox; in cluster mode waits (at most
    /// [`outbox::HANDOVER_WAIT`]) until the broker took it, never while the
    /// broker is away.
    pub async fn publish(&self, topic: &str, payload: &RawValue) {
        let text = crate::broker::encode_envelope(&self.identity.id, topic, payload);
        match self.outbox.push(text) {
            Some(number) if self.mode() == Mode::Cluster => {
                self.outbox.handed_over(number, outbox::HANDOVER_WAIT).await
            }
            Some(_) => {}
            None => {
                self.counters
                    .envelopes_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// This second's connects of `client` across the cluster, or `None`
    /// when Redis cannot say (the caller counts locally then).
    pub async fn connects_this_second(&self, client: std::net::IpAddr) -> Option<u64> {
        if self.mode() != Mode::Cluster {
            return None;
        }
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.broker
            .count_connect(&client.to_string(), second)
            .await
            .ok()
    }

    /// Envelopes waiting for Redis.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// `PUBSUB NUMSUB <channel>` while in cluster mode, -1 otherwise.
    pub async fn cluster_nodes(&self) -> i64 {
        if self.mode() != Mode::Cluster {
            return -1;
        }
        self.broker.subscribers().await.unwrap_or(-1)
    }

    /// The roster as stored, with `alive` recomputed; `None` when it cannot
    /// be read (degraded, or the read failed).
    pub async fn roster(&self) -> Option<Vec<RosterEntry>> {
        if self.mode() != Mode::Cluster {
            return None;
        }
        let raw = self.broker.roster().await.ok()?;
        let (entries, _) = self.identity.evaluate(raw, time::OffsetDateTime::now_utc());
        let mismatches = entries
            .iter()
            .filter(|e| e.alive && e.config_match == Some(ConfigMatch::Different))
            .count();
        self.note_mismatches(mismatches);
        Some(entries)
    }

    /// Live nodes whose fleet settings differ from this node's, as last seen.
    pub fn mismatches(&self) -> u64 {
        self.counters.mismatches.load(Ordering::Relaxed)
    }

    fn note_mismatches(&self, count: usize) {
        let before = self
            .counters
            .mismatches
            .swap(count as u64, Ordering::Relaxed);
        if count as u64 > before {
            tracing::warn!(
                nodes = count,
                "nodes with different settings (worker_secret, topic_ttl or redis.key_prefix) are in the roster"
            );
        }
    }

    /// Starts the subscriber, the outbox and the heartbeat on `tasks`, each
    /// restarted if it panics.
    pub fn spawn(self: &Arc<Self>, tasks: &TaskTracker, shutdown: &CancellationToken) {
        let parts: [(&'static str, TaskFn); 3] = [
            ("redis subscriber", |c, s| Box::pin(c.supervise(s))),
            ("redis publisher", |c, s| Box::pin(c.publish_loop(s))),
            ("cluster heartbeat", |c, s| Box::pin(c.heartbeat_loop(s))),
        ];
        for (name, task) in parts {
            tasks.spawn(Arc::clone(self).restarting(name, task, shutdown.clone()));
        }
    }

    /// Runs `task` until it returns; a panic is logged at error level,
    /// counted, shown in status, and the task starts again a second later, so
    /// a bug never ends clustering silently for the life of the process.
    async fn restarting(
        self: Arc<Self>,
        name: &'static str,
        task: TaskFn,
        shutdown: CancellationToken,
    ) {
        use futures_util::FutureExt;
        loop {
            let run = std::panic::AssertUnwindSafe(task(Arc::clone(&self), shutdown.clone()));
            let Err(panic) = run.catch_unwind().await else {
                return;
            };
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            self.counters.task_panics.fetch_add(1, Ordering::Relaxed);
            if name == "redis subscriber" {
                self.health.set_connected(false);
            }
            self.set_last_error(format!("{name} task panicked: {message}"));
            tracing::error!(task = name, panic = %message, "cluster task panicked; restarting it in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Removes this node from the roster (at shutdown).
    pub async fn leave(&self) {
        if self.mode() != Mode::Cluster {
            return;
        }
        if let Err(error) = self
            .broker
            .roster_remove(std::slice::from_ref(&self.identity.id))
            .await
        {
            tracing::warn!(%error, "could not remove this node from the roster");
        }
    }

    /// Why this node is not in the cluster right now, if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records why the node is degraded (`None`: it is not); true if the
    /// reason changed.
    fn set_last_error(&self, error: impl Into<Option<String>>) -> bool {
        let error = error.into();
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = *last != error;
        *last = error;
        changed
    }
}

#[cfg(test)]
mod tests;
