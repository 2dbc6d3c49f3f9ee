//! The state one skywave node shares between its listeners and tasks, and the
//! two operations both listeners need: publish and status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{rfc3339, Cluster, Mode, RosterEntry};
use crate::config::{format_go_seconds, Config};
use crate::dispatch::Dispatcher;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;

pub struct Node {
    pub config: Config,
    /// 16 hex characters, random per process; also the envelopes' `origin_id`.
    pub node_id: String,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub cluster: Option<Arc<Cluster>>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    started: Instant,
    started_at: time::OffsetDateTime,
    hostname: String,
}

/// The publish target is not registered (or expired).
#[derive(Debug, PartialEq, Eq)]
pub struct NotRegistered;

/// What a status request asks for beyond the Go worker's fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusRequest {
    pub topic_lists: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_list: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_topic_list: Option<Vec<String>>,
}

impl Node {
    pub fn new(
        config: Config,
        registry: Arc<Registry>,
        cluster: Option<Arc<Cluster>>,
        node_id: String,
    ) -> Arc<Self> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let hub = Hub::new(config.limits.socket_queue);
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, fanout) =
            Dispatcher::new(Arc::clone(&hub), Arc::clone(&metrics), shutdown.clone());
        tasks.spawn(fanout);
        let hostname = if config.node_name.is_empty() {
            crate::cluster::hostname()
        } else {
            config.node_name.clone()
        };
        Arc::new(Node {
            config,
            node_id,
            hub,
            registry,
            cluster,
            dispatcher,
            metrics,
            shutdown,
            tasks,
            started: Instant::now(),
            started_at: time::OffsetDateTime::now_utc(),
            hostname,
        })
    }

    pub fn mode(&self) -> Mode {
        match &self.cluster {
            None => Mode::Single,
            Some(cluster) => cluster.mode(),
        }
    }

    /// Uptime rounded to whole seconds, as Go's `Round(time.Second)` does.
    pub fn uptime_seconds(&self) -> u64 {
        let elapsed = self.started.elapsed();
        elapsed.as_secs() + u64::from(elapsed.subsec_millis() >= 500)
    }

    /// Delivers `payload` to the topic's sockets here and, in cluster mode,
    /// on every other node. Returns once the frame is queued.
    pub async fn publish(
        &self,
        topic: String,
        payload: Box<RawValue>,
    ) -> Result<(), NotRegistered> {
        if self.registry.lookup(&topic).await.is_none() {
            self.metrics
                .publishes_not_registered
                .fetch_add(1, Ordering::Relaxed);
            return Err(NotRegistered);
        }
        let frame = crate::ws::push_frame(&payload);
        if let Some(cluster) = &self.cluster {
            cluster.publish(&topic, &payload);
        }
        self.dispatcher.dispatch(topic, frame).await;
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub async fn status(&self, request: StatusRequest) -> StatusReport {
        let counts = self.hub.counts();
        let uptime = self.uptime_seconds();
        let (registered_topics, topic_list) = if request.topic_lists {
            let list = self.registry.list().await;
            (list.len(), Some(list))
        } else {
            (self.registry.count().await, None)
        };
        let cluster_nodes = match &self.cluster {
            Some(cluster) => cluster.cluster_nodes().await,
            None => -1,
        };
        let nodes = self.nodes().await;
        let mode = self.mode();
        let redis_error = match (&self.cluster, mode) {
            (Some(cluster), Mode::Degraded) => cluster.last_error(),
            _ => None,
        };
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
            node_id: self.node_id.clone(),
            redis_error,
            uptime_seconds: request.uptime_seconds.then_some(uptime),
            topic_list,
            active_topic_list: request.topic_lists.then(|| self.hub.active_topics()),
        }
    }

    /// Every node seen: this node alone in single mode; the roster in
    /// cluster mode (with this node's own entry fresh, as it is alive now);
    /// `None` while Redis is configured but cannot be read.
    async fn nodes(&self) -> Option<Vec<RosterEntry>> {
        let Some(cluster) = &self.cluster else {
            return Some(vec![self.roster_entry()]);
        };
        if self.mode() != Mode::Cluster {
            return None;
        }
        let mut roster = cluster.roster().await.ok()?;
        let own = self.roster_entry();
        match roster.iter_mut().find(|entry| entry.id == own.id) {
            Some(entry) => *entry = own,
            None => roster.push(own),
        }
        Some(roster)
    }

    /// This node's presence entry, as written to the roster.
    pub fn roster_entry(&self) -> RosterEntry {
        let counts = self.hub.counts();
        let uptime = self.uptime_seconds();
        RosterEntry {
            id: self.node_id.clone(),
            name: self.hostname.clone(),
            version: crate::version().to_string(),
            started_at: rfc3339(self.started_at),
            seen_at: rfc3339(time::OffsetDateTime::now_utc()),
            active_topics: counts.active_topics as u64,
            connected_clients: counts.connected_clients as u64,
            connected_sockets: counts.connected_sockets as u64,
            alive: true,
            uptime: format_go_seconds(uptime),
            uptime_seconds: uptime,
        }
    }
}
