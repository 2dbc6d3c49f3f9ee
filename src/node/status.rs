//! What a node reports: the status answer (internal API and `worker.status`
//! sockets) and the snapshot `/metrics` renders.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::Node;
use crate::cluster::Mode;
use crate::config::format_go_seconds;
use crate::metrics::{ClusterSnapshot, Snapshot};
use crate::roster::RosterEntry;

/// At most this many topics per list in one status answer; `?after=T`
/// pages on from topic `T`.
pub const TOPIC_LIST_MAX: usize = 10_000;

/// What a status request asks for beyond the Go worker's fields.
#[derive(Debug, Clone, Default)]
pub struct StatusRequest {
    pub topic_lists: bool,
    /// With `topic_lists`: only topics sorted after this one (paging).
    pub topics_after: Option<String>,
    /// The WebSocket status answer also carries `uptime_seconds`.
    pub uptime_seconds: bool,
}

/// `GET /internal/status` and the `worker.status` answer.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime: String,
    pub registered_topics: usize,
    pub active_topics: usize,
    pub connected_clients: usize,
    pub connected_sockets: usize,
    pub cluster_nodes: i64,
    /// Every node of the cluster (Go 0.3.0): this node alone in single mode,
    /// the roster in cluster mode, `null` while Redis is configured but away.
    pub nodes: Option<Vec<RosterEntry>>,
    pub mode: &'static str,
    pub node_id: String,
    /// Why the node is degraded (the last Redis error), while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_error: Option<String>,
    /// Registry changes Redis has not taken yet (refused, or made while it
    /// was away), while there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_registry_changes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_topic_list: Option<Vec<String>>,
    /// Set when a list was cut at [`TOPIC_LIST_MAX`]: ask again with
    /// `?topics=1&after=<the last topic of topic_list>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_list_truncated: Option<bool>,
}

impl Node {
    pub async fn status(&self, request: StatusRequest) -> StatusReport {
        let counts = self.hub.counts();
        let uptime = self.uptime_seconds();
        let mut truncated = false;
        let mut page = |mut list: Vec<String>| {
            if let Some(after) = &request.topics_after {
                list.retain(|topic| topic > after);
            }
            if list.len() > TOPIC_LIST_MAX {
                list.truncate(TOPIC_LIST_MAX);
                truncated = true;
            }
            list
        };
        let (registered_topics, topic_list, active_topic_list) = if request.topic_lists {
            let list = self.registry.list().await;
            let active = self.hub.active_topics();
            (list.len(), Some(page(list)), Some(page(active)))
        } else {
            (self.registry.count().await, None, None)
        };
        let cluster_nodes = match &self.cluster {
            Some(cluster) => cluster.cluster_nodes().await,
            None => -1,
        };
        let nodes = self.nodes().await;
        let mode = self.mode();
        let redis_error = self.redis_error();
        StatusReport {
            status: "ok",
            version: crate::version(),
            uptime: format_go_seconds(uptime),
            registered_topics,
            active_topics: counts.active_topics,
            connected_clients: counts.connected_clients,
            connected_sockets: counts.connected_sockets,
            cluster_nodes,
            nodes,
            mode: mode.as_str(),
            node_id: self.identity.id.clone(),
            redis_error,
            pending_registry_changes: Some(self.registry.pending()).filter(|n| *n > 0),
            uptime_seconds: request.uptime_seconds.then_some(uptime),
            topic_list,
            active_topic_list,
            topic_list_truncated: truncated.then_some(true),
        }
    }

    /// Why the node is degraded (the last Redis error), while it is.
    pub fn redis_error(&self) -> Option<String> {
        match (&self.cluster, self.mode()) {
            (Some(cluster), Mode::Degraded) => cluster.last_error(),
            _ => None,
        }
    }

    /// This node's roster entry, seen now.
    pub fn own_entry(&self) -> RosterEntry {
        self.identity.entry(self.hub.counts())
    }

    /// Every node seen: this node alone in single mode; the roster in
    /// cluster mode (with this node's own entry fresh, as it is alive now);
    /// `None` while Redis is configured but cannot be read.
    pub async fn nodes(&self) -> Option<Vec<RosterEntry>> {
        let own = self.own_entry();
        let Some(cluster) = &self.cluster else {
            return Some(vec![own]);
        };
        let mut roster = cluster.roster().await?;
        match roster.iter_mut().find(|entry| entry.id == own.id) {
            Some(entry) => *entry = own,
            None => roster.push(own),
        }
        Some(roster)
    }

    /// The gauges and cluster counters for `/metrics`, without a Redis
    /// round trip.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.hub.counts();
        let cluster = self.cluster.as_ref().map(|cluster| {
            let c = cluster.counters();
            let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            ClusterSnapshot {
                joins: load(&c.joins),
                subscriber_restarts: load(&c.subscriber_restarts),
                command_failures: cluster.command_failures(),
                envelopes_received: load(&c.envelopes_received),
                envelopes_malformed: load(&c.envelopes_malformed),
                envelopes_published: load(&c.envelopes_published),
                envelopes_dropped: load(&c.envelopes_dropped),
                publish_retries: load(&c.publish_retries),
                task_panics: load(&c.task_panics),
                resyncs: load(&c.resyncs),
                config_mismatches: cluster.mismatches(),
                outbox: cluster.outbox_len() as u64,
                registry_pending: self.registry.pending() as u64,
            }
        });
        Snapshot {
            sockets: counts.connected_sockets as u64,
            clients: counts.connected_clients as u64,
            active_topics: counts.active_topics as u64,
            registered_topics: self.registry.last_count() as u64,
            uptime_seconds: self.uptime_seconds(),
            mode: self.mode().as_str(),
            max_sockets: self.config.limits.max_sockets as u64,
            fd_limit: crate::descriptors::limit().map(|limit| limit.now),
            open_fds: crate::descriptors::open(),
            cluster,
        }
    }
}
