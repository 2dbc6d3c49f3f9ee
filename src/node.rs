//! One skywave node: composes the hub, the registry, the dispatcher, the
//! metrics and (in cluster mode) the broker and the cluster membership, and
//! offers the two operations both listeners need, publish and status. Its
//! parts are reached through methods, never fields, and nothing runs until
//! [`Node::start`] is called from `App::run`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, Health};
use crate::cluster::{Cluster, Mode, Parts};
use crate::config::{format_go_seconds, Config};
use crate::dispatch::Dispatcher;
use crate::hub::Hub;
use crate::metrics::{ClusterSnapshot, Metrics, Snapshot};
use crate::registry::Registry;
use crate::roster::{Identity, RosterEntry};

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Node {
    config: Config,
    identity: Arc<Identity>,
    hub: Arc<Hub>,
    registry: Arc<Registry>,
    cluster: Option<Arc<Cluster>>,
    dispatcher: Dispatcher,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Set by `stop`: until when sockets may still be written to.
    drain_deadline: OnceLock<Instant>,
    tasks: TaskTracker,
    /// The fan-out task, until `start` spawns it.
    fanout: Mutex<Option<Task>>,
}

/// How long, at shutdown, the node goes on delivering what it accepted
/// before the signal (the fan-out queue, then every socket's outbox) before
/// the sockets get 1001: the whole node's budget, well within the 10 s in
/// which the process exits.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Why a publish was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The target is not registered (or expired).
    NotRegistered,
    /// Shutdown has begun: nothing accepted now could be delivered.
    ShuttingDown,
}

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
    /// Builds the node from its configuration; nothing is connected or
    /// spawned yet.
    pub fn new(config: Config) -> Result<Arc<Self>, BrokerError> {
        let shutdown = CancellationToken::new();
        let identity = Arc::new(Identity::new(&config.node_name));
        let hub = Hub::new(config.limits.socket_queue);
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, fanout) = Dispatcher::new(
            Arc::clone(&hub),
            Arc::clone(&metrics),
            shutdown.clone(),
            SHUTDOWN_DRAIN,
        );
        let shared = match &config.redis_url {
            Some(url) => Some((
                Arc::new(Broker::new(&config, url)?),
                Arc::new(Health::default()),
            )),
            None => None,
        };
        let registry = Registry::new(config.topic_ttl, shared.clone());
        let cluster = shared.map(|(broker, health)| {
            Cluster::new(Parts {
                broker,
                health,
                registry: Arc::clone(&registry),
                dispatcher: dispatcher.clone(),
                hub: Arc::clone(&hub),
                identity: Arc::clone(&identity),
            })
        });
        Ok(Arc::new(Node {
            config,
            identity,
            hub,
            registry,
            cluster,
            dispatcher,
            metrics,
            shutdown,
            drain_deadline: OnceLock::new(),
            tasks: TaskTracker::new(),
            fanout: Mutex::new(Some(Box::pin(fanout))),
        }))
    }

    /// Starts the node's own tasks (fan-out, cluster) on its tracker.
    pub fn start(&self) {
        let fanout = self
            .fanout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(fanout) = fanout {
            self.tasks.spawn(fanout);
        }
        if let Some(cluster) = &self.cluster {
            cluster.spawn(&self.tasks, &self.shutdown);
        }
    }

    /// Leaves the roster (cluster mode) and tells every task to stop; from
    /// now on, [`SHUTDOWN_DRAIN`] for the sockets to take what is queued.
    pub async fn stop(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        let _ = self.drain_deadline.set(Instant::now() + SHUTDOWN_DRAIN);
        self.shutdown.cancel();
        self.tasks.close();
    }

    /// Until when, once shutdown has begun, sockets may still be written to.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get().copied()
    }

    /// Resolves at shutdown once every publish accepted before it has been
    /// queued into the sockets' outboxes (or the drain window ran out).
    pub async fn fanout_drained(&self) {
        self.dispatcher.drained().await;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// 16 hex characters, random per process; also the envelopes' `origin_id`.
    pub fn node_id(&self) -> &str {
        &self.identity.id
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn mode(&self) -> Mode {
        match &self.cluster {
            None => Mode::Single,
            Some(cluster) => cluster.mode(),
        }
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.identity.uptime_seconds()
    }

    /// Delivers `payload` to the topic's sockets here and, in cluster mode,
    /// on every other node. Returns once the frame is queued; refused once
    /// shutdown has begun (so that what is accepted is delivered).
    pub async fn publish(&self, topic: String, payload: Box<RawValue>) -> Result<(), PublishError> {
        if self.registry.lookup(&topic).await.is_none() {
            self.metrics
                .publishes_not_registered
                .fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::NotRegistered);
        }
        let frame = crate::frames::push(&payload);
        // Here first: a publish this node refuses goes to no other node.
        let cluster_topic = self.cluster.as_ref().map(|_| topic.clone());
        self.dispatcher
            .try_dispatch(topic, frame)
            .await
            .map_err(|_| PublishError::ShuttingDown)?;
        if let (Some(cluster), Some(topic)) = (&self.cluster, cluster_topic) {
            cluster.publish(&topic, &payload);
        }
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

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
            node_id: self.identity.id.clone(),
            redis_error,
            pending_registry_changes: Some(self.registry.pending()).filter(|n| *n > 0),
            uptime_seconds: request.uptime_seconds.then_some(uptime),
            topic_list,
            active_topic_list,
            topic_list_truncated: truncated.then_some(true),
        }
    }

    /// Every node seen: this node alone in single mode; the roster in
    /// cluster mode (with this node's own entry fresh, as it is alive now);
    /// `None` while Redis is configured but cannot be read.
    async fn nodes(&self) -> Option<Vec<RosterEntry>> {
        let own = self.identity.entry(self.hub.counts());
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
            cluster,
        }
    }
}
