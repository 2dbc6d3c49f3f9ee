//! Registered topics with their TTL: publish and the WebSocket handshake ask
//! it whether a topic exists and whether it requires a token.
//!
//! Single-instance mode uses only [`MemoryRegistry`]. In cluster mode Redis is
//! the source of truth (`redis.rs`) while the link is up, and the memory
//! registry mirrors what was registered through this node: it answers while
//! Redis is away (`degraded` mode) and is written back when Redis returns, so
//! an outage loses no registration. One Redis round trip per lookup.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

pub use self::memory::{MemoryRegistry, Registration};
pub use self::redis::RedisRegistry;
use crate::cluster::LinkError;

/// The reserved topic every node registers for its own status requests.
pub const STATUS_TOPIC: &str = "worker.status";

/// What a registration says about its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicMeta {
    pub require_token: bool,
}

pub struct Registry {
    local: MemoryRegistry,
    redis: Option<RedisRegistry>,
    ttl: Duration,
}

impl Registry {
    /// A registry with the reserved status topic pinned for the life of the process.
    pub fn new(ttl: Duration, redis: Option<RedisRegistry>) -> Arc<Self> {
        let local = MemoryRegistry::new();
        local.register(
            STATUS_TOPIC,
            TopicMeta {
                require_token: true,
            },
            None,
        );
        Arc::new(Registry { local, redis, ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The Redis side, when this node is configured for a cluster and the
    /// link is up right now.
    fn redis_up(&self) -> Option<&RedisRegistry> {
        self.redis.as_ref().filter(|r| r.is_up())
    }

    /// Registers (or re-registers) a topic. Never fails: if Redis cannot take
    /// it now, the local mirror keeps it and it is written back on rejoin.
    pub async fn register(&self, topic: &str, meta: TopicMeta) {
        if topic == STATUS_TOPIC {
            // Reserved: stays registered with require_token for the life of the process.
            return;
        }
        self.local.register(topic, meta, Some(self.ttl));
        if let Some(redis) = self.redis_up() {
            if let Err(error) = redis.register(topic, meta, self.ttl).await {
                tracing::warn!(%error, "redis unavailable: registration kept locally until it returns");
            }
        }
    }

    pub async fn unregister(&self, topic: &str) {
        if topic == STATUS_TOPIC {
            return;
        }
        self.local.unregister(topic);
        if let Some(redis) = self.redis_up() {
            if let Err(error) = redis.unregister(topic).await {
                tracing::warn!(%error, "redis unavailable: unregister applied locally only");
            }
        }
    }

    pub async fn lookup(&self, topic: &str) -> Option<TopicMeta> {
        if topic == STATUS_TOPIC {
            return self.local.lookup(topic);
        }
        if let Some(redis) = self.redis_up() {
            match redis.lookup(topic).await {
                Ok(Some(meta)) => return Some(meta),
                Ok(None) => {
                    // The cluster is authoritative: unregistered or expired
                    // elsewhere means gone here too.
                    self.local.unregister(topic);
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "redis lookup failed: answering from the local registry");
                }
            }
        }
        self.local.lookup(topic)
    }

    /// Live registered topics (cluster-wide while Redis is up).
    pub async fn count(&self) -> usize {
        if let Some(redis) = self.redis_up() {
            if let Ok(topics) = redis.list().await {
                return topics.len();
            }
        }
        self.local.count()
    }

    /// Registered topics, sorted (cluster-wide while Redis is up).
    pub async fn list(&self) -> Vec<String> {
        if let Some(redis) = self.redis_up() {
            if let Ok(topics) = redis.list().await {
                return topics;
            }
        }
        let mut topics = self.local.list();
        topics.sort();
        topics
    }

    /// Frees expired local entries.
    pub fn sweep(&self) -> usize {
        self.local.sweep()
    }

    /// Writes every local registration (and the pinned status topic) to
    /// Redis, with its remaining TTL. Called whenever the link (re)joins.
    pub async fn write_back(&self) -> Result<usize, LinkError> {
        let Some(redis) = &self.redis else {
            return Ok(0);
        };
        let registrations = self.local.registrations();
        redis.write_back(&registrations, self.ttl).await?;
        Ok(registrations.len())
    }

    /// Re-sets the pinned status topic in Redis so it never expires there.
    pub async fn refresh_status_topic(&self) -> Result<(), LinkError> {
        match self.redis_up() {
            Some(redis) => {
                redis
                    .register(
                        STATUS_TOPIC,
                        TopicMeta {
                            require_token: true,
                        },
                        self.ttl,
                    )
                    .await
            }
            None => Ok(()),
        }
    }

    /// Memory entries held, for the leak checks of the tests and metrics.
    pub fn local_entries(&self) -> usize {
        self.local.len_including_expired()
    }
}
