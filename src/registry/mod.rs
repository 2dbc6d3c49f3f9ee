//! Registered topics with their TTL: publish and the WebSocket handshake ask
//! it whether a topic exists and whether it requires a token.
//!
//! Single-instance mode uses only the [`MemoryRegistry`]. In cluster mode the
//! broker's shared registry is the source of truth while the subscription is
//! healthy; two memory registries answer while it is away (`degraded`): what
//! was registered through this node (`local`), and what this node saw of
//! the whole cluster (`seen`: every lookup's answer, and a full copy taken
//! at each join and every 30 s), so a browser landing on this node during an
//! outage is not refused for a topic registered elsewhere. Changes the broker
//! did not take (it was away, timed out, or refused them) are kept as
//! *pending* and written back in order when it answers again; changes it did
//! take are never rewritten, so a topic another node unregistered meanwhile
//! stays unregistered. Only after the broker itself restarted (its data may
//! be gone) is the whole mirror written back, and then only where a key is
//! missing.

mod count;
mod memory;
mod pending;

use std::sync::Arc;
use std::time::Duration;

pub use self::memory::MemoryRegistry;
use self::pending::Pending;
use crate::broker::{Broker, BrokerError, Health};
use crate::telemetry::Throttled;
pub use crate::topic::{TopicChange, TopicMeta, STATUS_TOPIC};

/// Redis is up but refused a registry change; it is kept here and retried.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

const STATUS_META: TopicMeta = TopicMeta {
    require_token: true,
};

pub struct Registry {
    local: MemoryRegistry,
    /// The cluster's registry as this node last saw it (expiries included).
    seen: MemoryRegistry,
    shared: Option<Shared>,
    pending: Pending,
    count: count::CountCache,
    ttl: Duration,
    refused: Throttled,
    /// Held for writing by a write-back, for reading by a direct change: a
    /// change made while pending ones are being written is applied after
    /// them, never overwritten by an older one.
    writing: tokio::sync::RwLock<()>,
    /// The broker restarted (lost its data) and this node's registrations
    /// are not all written back yet: until they are, a topic missing there
    /// is not taken as unregistered, and every write-back tries them again.
    mirror_unwritten: std::sync::atomic::AtomicBool,
}

/// The broker's registry and whether it can be asked right now.
struct Shared {
    broker: Arc<Broker>,
    health: Arc<Health>,
}

impl Registry {
    /// A registry with the reserved status topic pinned for the life of the
    /// process; `shared` is the broker in cluster mode.
    pub fn new(ttl: Duration, shared: Option<(Arc<Broker>, Arc<Health>)>) -> Arc<Self> {
        let local = MemoryRegistry::new();
        local.register(STATUS_TOPIC, STATUS_META, None);
        Arc::new(Registry {
            local,
            seen: MemoryRegistry::new(),
            shared: shared.map(|(broker, health)| Shared { broker, health }),
            pending: Pending::default(),
            count: count::CountCache::default(),
            ttl,
            refused: Throttled::new(Duration::from_secs(10)),
            writing: tokio::sync::RwLock::new(()),
            mirror_unwritten: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The broker, when this node is in a cluster and it is connected.
    fn connected(&self) -> Option<&Broker> {
        self.shared
            .as_ref()
            .filter(|shared| shared.health.is_connected())
            .map(|shared| shared.broker.as_ref())
    }

    /// Registers (or re-registers) a topic. What the broker cannot take now
    /// stays pending here and is written back when it can; the change holds
    /// on this node at once either way. `Err` when Redis is up but refused
    /// it (OOM, READONLY, …): the publisher must hear that the cluster did
    /// not get it, since other nodes answer 404 meanwhile.
    pub async fn register(&self, topic: &str, meta: TopicMeta) -> Result<(), Refused> {
        if topic == STATUS_TOPIC {
            // Reserved: stays registered with require_token for the life of the process.
            return Ok(());
        }
        self.local.register(topic, meta, Some(self.ttl));
        let change = TopicChange::Register {
            topic: topic.to_string(),
            meta,
            ttl: self.ttl,
        };
        self.share(topic, change).await
    }

    pub async fn unregister(&self, topic: &str) -> Result<(), Refused> {
        if topic == STATUS_TOPIC {
            return Ok(());
        }
        self.local.unregister(topic);
        self.seen.unregister(topic);
        let change = TopicChange::Unregister {
            topic: topic.to_string(),
        };
        self.share(topic, change).await
    }

    async fn share(&self, topic: &str, change: TopicChange) -> Result<(), Refused> {
        if self.shared.is_none() {
            return Ok(());
        }
        let Some(broker) = self.connected() else {
            self.pending.mark(topic, &change);
            return Ok(());
        };
        let _direct = self.writing.read().await;
        let result = match &change {
            TopicChange::Register { meta, ttl, .. } => broker.topic_set(topic, *meta, *ttl).await,
            TopicChange::Unregister { .. } => broker.topic_del(topic).await,
        };
        match result {
            Ok(()) => {
                self.pending.clear(topic);
                Ok(())
            }
            Err(error) => {
                self.pending.mark(topic, &change);
                self.refused.warn(|repeats| {
                    tracing::warn!(%error, repeats, pending = self.pending.len(), "the shared registry did not take a change: kept here, written back when it does");
                });
                match error {
                    BrokerError::Refused(_) => Err(Refused),
                    _ => Ok(()),
                }
            }
        }
    }

    pub async fn lookup(&self, topic: &str) -> Option<TopicMeta> {
        if topic == STATUS_TOPIC {
            return self.local.lookup(topic);
        }
        if let Some(broker) = self.connected() {
            match broker.topic_get(topic).await {
                Ok(Some((meta, remaining))) => {
                    self.seen
                        .register(topic, meta, Some(remaining.unwrap_or(self.ttl)));
                    return Some(meta);
                }
                Ok(None) if self.pending.is_register(topic) || self.mirror_unwritten() => {}
                Ok(None) => {
                    // The cluster is authoritative: unregistered or expired
                    // elsewhere means gone here too.
                    self.local.unregister(topic);
                    self.seen.unregister(topic);
                    return None;
                }
                Err(error) => {
                    tracing::debug!(%error, "registry lookup failed: answering from the local registry");
                }
            }
        }
        self.local.lookup(topic).or_else(|| self.seen.lookup(topic))
    }

    /// Replaces the copy of the cluster's registry with a fresh one.
    pub async fn refresh_seen(&self, broker: &Broker) -> Result<usize, BrokerError> {
        let entries = broker.topic_entries().await?;
        let fresh: std::collections::HashSet<&str> =
            entries.iter().map(|(topic, _, _)| topic.as_str()).collect();
        self.seen.retain(|topic| fresh.contains(topic));
        for (topic, meta, remaining) in &entries {
            self.seen
                .register(topic, *meta, Some(remaining.unwrap_or(self.ttl)));
        }
        Ok(entries.len())
    }

    /// Live registered topics: cluster-wide while connected (one `SCAN`
    /// shared by concurrent callers), this node's otherwise.
    pub async fn count(&self) -> usize {
        if let Some(broker) = self.connected() {
            if let Ok(count) = self.count.get(broker).await {
                return count;
            }
        }
        self.offline_list().len()
    }

    /// The last count the heartbeat or a status call saw (for metrics,
    /// which must not scan the registry on every scrape).
    pub fn last_count(&self) -> usize {
        match self.connected() {
            Some(_) => self.count.last().unwrap_or_else(|| self.local.count()),
            None => self.offline_list().len(),
        }
    }

    /// While the broker is away: this node's registrations and the ones it
    /// saw, sorted, without duplicates.
    fn offline_list(&self) -> Vec<String> {
        let mut topics = self.local.list();
        if self.shared.is_some() {
            topics.extend(self.seen.list());
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// Registered topics, sorted (cluster-wide while connected).
    pub async fn list(&self) -> Vec<String> {
        if let Some(broker) = self.connected() {
            if let Ok(topics) = broker.topics().await {
                return topics;
            }
        }
        self.offline_list()
    }

    /// Frees expired entries.
    pub fn sweep(&self) -> usize {
        self.local.sweep() + self.seen.sweep()
    }

    /// Changes the broker has not taken yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes the pending changes to the broker, in order. After a broker
    /// restart ([`Registry::note_restart`], until one write-back succeeds)
    /// the whole local mirror is written first, only where keys are missing. Returns how many changes were applied.
    pub async fn write_back(&self, broker: &Broker) -> Result<usize, BrokerError> {
        use std::sync::atomic::Ordering;
        let _exclusive = self.writing.write().await;
        let mut written = 0;
        if self.mirror_unwritten() {
            let mirror: Vec<TopicChange> = self
                .local
                .registrations()
                .into_iter()
                .map(|(topic, meta, remaining)| TopicChange::Register {
                    topic,
                    meta,
                    ttl: remaining.unwrap_or(self.ttl),
                })
                .collect();
            broker.apply(&mirror, true).await?;
            self.mirror_unwritten.store(false, Ordering::SeqCst);
            written += mirror.len();
        }
        let (changes, marks) = self.pending.snapshot(|topic| {
            self.local
                .remaining(topic)
                .map(|(meta, remaining)| (meta, remaining.unwrap_or(self.ttl)))
        });
        broker.apply(&changes, false).await?;
        self.pending.settle(&marks);
        Ok(written + changes.len())
    }

    /// The broker lost its data: from now until the next successful
    /// write-back, this node's registrations count as pending (called by the
    /// join before it reports `cluster`, so no lookup in between takes a
    /// missing key for an unregister).
    pub fn note_restart(&self) {
        self.mirror_unwritten
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a write-back has something to do.
    pub fn needs_write_back(&self) -> bool {
        self.pending() > 0 || self.mirror_unwritten()
    }

    fn mirror_unwritten(&self) -> bool {
        self.mirror_unwritten
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Re-sets the pinned status topic in the broker so it never expires there.
    pub async fn refresh_status_topic(&self) -> Result<(), BrokerError> {
        match self.connected() {
            Some(broker) => broker.topic_set(STATUS_TOPIC, STATUS_META, self.ttl).await,
            None => Ok(()),
        }
    }

    /// Memory entries held, for the leak checks of the tests and metrics.
    pub fn local_entries(&self) -> usize {
        self.local.len_including_expired() + self.seen.len_including_expired()
    }
}
