//! One skywave node: composes the hub, the registry, the dispatcher, the
//! metrics and (in cluster mode) the broker and the cluster membership, and
//! offers the two operations both listeners need, publish and status. Its
//! parts are reached through methods, never fields, and nothing runs until
//! [`Node::start`] is called from `App::run`.

mod status;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, Health};
use crate::cluster::{Cluster, Mode, Parts};
use crate::config::Config;
use crate::dispatch::{Accepted, Dispatcher};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::roster::Identity;

pub use self::status::{StatusReport, StatusRequest, TOPIC_LIST_MAX};

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
    /// Set at the very start of `stop`: new internal API requests are
    /// answered 503 from then on, while what is in flight finishes.
    stopping: std::sync::atomic::AtomicBool,
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

impl Node {
    /// Builds the node from its configuration; nothing is connected or
    /// spawned yet.
    pub fn new(config: Config) -> Result<Arc<Self>, BrokerError> {
        let shutdown = CancellationToken::new();
        let identity = Arc::new(Identity::new(&config));
        let hub = Hub::with_limits(config.limits.socket_queue, config.limits.max_frame_age);
        let metrics = Arc::new(Metrics::default());
        let (dispatcher, fanout) = Dispatcher::new(
            Arc::clone(&hub),
            Arc::clone(&metrics),
            shutdown.clone(),
            SHUTDOWN_DRAIN,
        );
        let shared = Broker::from_config(&config)?
            .map(|broker| (Arc::new(broker), Arc::new(Health::default())));
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
            stopping: std::sync::atomic::AtomicBool::new(false),
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

    /// Refuses new work, leaves the roster (cluster mode) and tells every
    /// task to stop.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        let _ = self.drain_deadline.set(Instant::now() + SHUTDOWN_DRAIN);
        self.shutdown.cancel();
        // The sockets' sessions do not wait on the token (it would cost
        // every idle socket 72 bytes): each is woken and finds the drain
        // deadline set. One subscribing meanwhile finds it set too: it
        // reads the deadline after its subscription took the hub's lock.
        self.hub.wake_all();
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

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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

    /// This second's connects of `client` across the cluster (`None`:
    /// single mode, or Redis cannot say right now).
    pub async fn cluster_connects(&self, client: std::net::IpAddr) -> Option<u64> {
        match &self.cluster {
            Some(cluster) => cluster.connects_this_second(client).await,
            None => None,
        }
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.identity.uptime_seconds()
    }

    /// Delivers `payload` to the topic's sockets here and, in cluster mode,
    /// on every other node. Returns once the frame has its place here and,
    /// in cluster mode, the broker took the envelope (bounded, see
    /// `cluster::outbox`); refused once shutdown has begun (so that what is
    /// accepted is delivered).
    ///
    /// Without a cluster the local fan-out starts when the returned
    /// [`Accepted`] is dropped (the internal API answers first, see
    /// `dispatch`); with one it has started already, while the broker
    /// takes the envelope.
    pub async fn publish(
        &self,
        topic: String,
        payload: Box<RawValue>,
    ) -> Result<Accepted, PublishError> {
        if self.registry.lookup(&topic).await.is_none() {
            self.metrics
                .publishes_not_registered
                .fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::NotRegistered);
        }
        let frame = crate::frames::push(&payload);
        // Here first: a publish this node refuses goes to no other node.
        let cluster_topic = self.cluster.as_ref().map(|_| topic.clone());
        let mut accepted = self
            .dispatcher
            .try_dispatch(topic, frame)
            .await
            .map_err(|_| PublishError::ShuttingDown)?;
        if let (Some(cluster), Some(topic)) = (&self.cluster, cluster_topic) {
            accepted.hand_over();
            cluster.publish(&topic, &payload).await;
        }
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(accepted)
    }
}
