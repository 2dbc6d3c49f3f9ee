//! Topics as the registry and the broker see them: what a registration says
//! (`TopicMeta`), the reserved status topic, and a change still to be
//! written to the shared registry.

use std::time::Duration;

/// The reserved topic every node registers for its own status requests.
pub const STATUS_TOPIC: &str = "worker.status";

/// What a registration says about its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicMeta {
    pub require_token: bool,
}

/// A change to the shared registry that this node made (or could not make)
/// while the broker was away, to be applied when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicChange {
    /// Register with the time left before the topic expires.
    Register {
        topic: String,
        meta: TopicMeta,
        ttl: Duration,
    },
    Unregister {
        topic: String,
    },
}

impl TopicChange {
    pub fn topic(&self) -> &str {
        match self {
            TopicChange::Register { topic, .. } | TopicChange::Unregister { topic } => topic,
        }
    }
}
