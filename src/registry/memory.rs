//! The in-memory topic registry: topic -> meta with an expiry instant.
//!
//! In single-instance mode it is the registry. In cluster mode it mirrors the
//! registrations made through this node, so that they can be written back to
//! Redis after an outage, and it answers lookups while Redis is away.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::topic::TopicMeta;

pub struct MemoryRegistry {
    topics: DashMap<Arc<str>, Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    meta: TopicMeta,
    /// `None` = pinned for the life of the process (the reserved status topic).
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        MemoryRegistry {
            topics: DashMap::new(),
        }
    }

    /// Registers or re-registers `topic`: replaces its meta and restarts its TTL.
    pub fn register(&self, topic: &str, meta: TopicMeta, ttl: Option<Duration>) {
        let entry = Entry {
            meta,
            expires_at: ttl.map(|ttl| Instant::now() + ttl),
        };
        match self.topics.get_mut(topic) {
            Some(mut existing) => *existing = entry,
            None => {
                self.topics.insert(Arc::from(topic), entry);
            }
        }
    }

    pub fn unregister(&self, topic: &str) {
        self.topics.remove(topic);
    }

    pub fn lookup(&self, topic: &str) -> Option<TopicMeta> {
        let now = Instant::now();
        let entry = *self.topics.get(topic)?;
        if entry.live(now) {
            Some(entry.meta)
        } else {
            self.topics.remove_if(topic, |_, e| !e.live(now));
            None
        }
    }

    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.topics.iter().filter(|e| e.live(now)).count()
    }

    pub fn list(&self) -> Vec<String> {
        let now = Instant::now();
        self.topics
            .iter()
            .filter(|e| e.live(now))
            .map(|e| e.key().to_string())
            .collect()
    }

    /// Frees expired entries; returns how many were removed.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let before = self.topics.len();
        self.topics.retain(|_, e| e.live(now));
        before.saturating_sub(self.topics.len())
    }

    /// Every live registration with its remaining TTL (`None` = pinned).
    pub fn registrations(&self) -> Vec<(String, TopicMeta, Option<Duration>)> {
        let now = Instant::now();
        self.topics
            .iter()
            .filter(|e| e.live(now))
            .map(|e| {
                let remaining = e.expires_at.map(|at| at.saturating_duration_since(now));
                (e.key().to_string(), e.meta, remaining)
            })
            .collect()
    }

    /// One live registration's meta and remaining TTL (`None` = pinned).
    pub fn remaining(&self, topic: &str) -> Option<(TopicMeta, Option<Duration>)> {
        let now = Instant::now();
        let entry = *self.topics.get(topic)?;
        entry.live(now).then(|| {
            (
                entry.meta,
                entry.expires_at.map(|at| at.saturating_duration_since(now)),
            )
        })
    }

    /// Entries held, expired or not (to show that expiry frees memory).
    pub fn len_including_expired(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: TopicMeta = TopicMeta {
        require_token: true,
    };
    const PUBLIC: TopicMeta = TopicMeta {
        require_token: false,
    };

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_refresh_and_sweep() {
        let registry = MemoryRegistry::new();
        let ttl = Some(Duration::from_secs(2));
        registry.register("t", PRIVATE, ttl);
        tokio::time::advance(Duration::from_secs(1)).await;
        registry.register("t", PUBLIC, ttl); // replaces meta, refreshes TTL
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(registry.lookup("t"), Some(PUBLIC));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(registry.lookup("t"), None);
        assert_eq!(registry.count(), 0);

        registry.register("a", PRIVATE, ttl);
        registry.register("pinned", PRIVATE, None);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(registry.len_including_expired(), 2);
        assert_eq!(registry.sweep(), 1);
        assert_eq!(registry.len_including_expired(), 1);
        assert_eq!(registry.list(), vec!["pinned".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn registrations_carry_remaining_ttl() {
        let registry = MemoryRegistry::new();
        registry.register("t", PRIVATE, Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(4)).await;
        let regs = registry.registrations();
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].2, Some(Duration::from_secs(6)));
        assert_eq!(
            registry.remaining("t"),
            Some((PRIVATE, Some(Duration::from_secs(6))))
        );
        registry.unregister("t");
        assert!(registry.registrations().is_empty());
    }
}
