//! Cluster mode over Redis: the supervised Pub/Sub subscriber, the ordered
//! envelope publisher, and the presence heartbeat.
//!
//! The supervisor owns the node's membership: it connects a dedicated
//! Pub/Sub connection, subscribes to `<prefix>events`, verifies with
//! `PUBSUB NUMSUB` that the subscription is real, writes the local
//! registrations back (so nothing registered during an outage is lost) and
//! only then reports `cluster`. Any failure — a closed stream, a failed ping,
//! a pooled command that timed out — drops the node to `degraded` (local
//! registry, local delivery) and the supervisor rejoins with a capped backoff.

mod envelope;
mod link;
mod presence;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

pub use self::envelope::{
    decode as decode_envelope, encode as encode_envelope, Envelope, EnvelopeError,
};
pub use self::link::{LinkError, RedisLink};
pub use self::presence::{RosterEntry, ALIVE_WINDOW, HEARTBEAT};
use crate::config::{Config, Secret};
use crate::node::Node;

/// Envelopes waiting for Redis before new ones are dropped (and counted).
const OUTGOING_QUEUE: usize = 16_384;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How often an unchanged reason for being degraded is logged again.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One of the cluster's long-lived tasks, as `restarting` starts it.
type TaskFn =
    fn(Arc<Cluster>, Arc<Node>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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

pub struct Cluster {
    link: Arc<RedisLink>,
    node_id: String,
    channel: String,
    roster_key: String,
    subscribed: AtomicBool,
    outgoing: mpsc::Sender<String>,
    /// The publisher task's end of the queue; behind a lock so that a
    /// restarted publisher task takes it up again.
    outgoing_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
    /// Why the node is not in the cluster, for status (`redis_error`).
    last_error: Mutex<Option<String>>,
    pub counters: ClusterCounters,
}

/// Counters the metrics endpoint reports.
#[derive(Default)]
pub struct ClusterCounters {
    pub joins: AtomicU64,
    pub subscriber_restarts: AtomicU64,
    pub envelopes_received: AtomicU64,
    pub envelopes_malformed: AtomicU64,
    pub envelopes_published: AtomicU64,
    pub envelopes_dropped: AtomicU64,
    /// Cluster tasks that panicked and were restarted.
    pub task_panics: AtomicU64,
}

impl Cluster {
    pub fn new(config: &Config, url: &Secret, node_id: &str) -> Result<Arc<Self>, LinkError> {
        let link = Arc::new(RedisLink::new(config, url)?);
        let (outgoing, rx) = mpsc::channel(OUTGOING_QUEUE);
        Ok(Arc::new(Cluster {
            channel: format!("{}events", link.prefix()),
            roster_key: format!("{}nodes", link.prefix()),
            link,
            node_id: node_id.to_string(),
            subscribed: AtomicBool::new(false),
            outgoing,
            outgoing_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            last_error: Mutex::new(None),
            counters: ClusterCounters::default(),
        }))
    }

    pub fn link(&self) -> Arc<RedisLink> {
        Arc::clone(&self.link)
    }

    pub fn mode(&self) -> Mode {
        if self.link.is_up() && self.subscribed.load(Ordering::Acquire) {
            Mode::Cluster
        } else {
            Mode::Degraded
        }
    }

    /// Hands an envelope to the publisher task; never waits for Redis.
    pub fn publish(&self, topic: &str, payload: &RawValue) {
        if self.mode() != Mode::Cluster {
            self.counters
                .envelopes_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let text = encode_envelope(&self.node_id, topic, payload);
        if self.outgoing.try_send(text).is_err() {
            self.counters
                .envelopes_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `PUBSUB NUMSUB <channel>` while in cluster mode, -1 otherwise.
    pub async fn cluster_nodes(&self) -> i64 {
        if self.mode() != Mode::Cluster {
            return -1;
        }
        self.numsub().await.unwrap_or(-1)
    }

    async fn numsub(&self) -> Result<i64, LinkError> {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&self.channel);
        let (_, count): (String, i64) = self.link.query(&cmd).await?;
        Ok(count)
    }

    /// The roster as stored in Redis, with `alive` recomputed.
    pub async fn roster(&self) -> Result<Vec<RosterEntry>, LinkError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&self.roster_key);
        let raw: Vec<(String, String)> = self.link.query(&cmd).await?;
        let (entries, _) = presence::evaluate(raw, time::OffsetDateTime::now_utc());
        Ok(entries)
    }

    /// Starts the supervisor, the publisher and the heartbeat on the node's
    /// tracker, each restarted if it panics.
    pub fn spawn(self: &Arc<Self>, node: &Arc<Node>) {
        let tasks: [(&'static str, TaskFn); 3] = [
            ("redis subscriber", |c, n| Box::pin(c.supervise(n))),
            ("redis publisher", |c, n| Box::pin(c.publish_loop(n))),
            ("cluster heartbeat", |c, n| Box::pin(c.heartbeat_loop(n))),
        ];
        for (name, task) in tasks {
            node.tasks
                .spawn(Arc::clone(self).restarting(name, task, Arc::clone(node)));
        }
    }

    /// Runs `task` until it returns; a panic is logged at error level,
    /// counted, shown in status, and the task starts again a second later, so
    /// a bug never ends clustering silently for the life of the process.
    async fn restarting(self: Arc<Self>, name: &'static str, task: TaskFn, node: Arc<Node>) {
        use futures_util::FutureExt;
        loop {
            let run = std::panic::AssertUnwindSafe(task(Arc::clone(&self), Arc::clone(&node)));
            let Err(panic) = run.catch_unwind().await else {
                return;
            };
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            self.counters.task_panics.fetch_add(1, Ordering::Relaxed);
            self.subscribed.store(false, Ordering::Release);
            self.set_last_error(format!("{name} task panicked: {message}"));
            tracing::error!(task = name, panic = %message, "cluster task panicked; restarting it in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = node.shutdown.cancelled() => return,
            }
        }
    }

    /// Why this node is not in the cluster right now, if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records why the node is degraded; true if the reason changed.
    fn set_last_error(&self, error: String) -> bool {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = last.as_deref() != Some(error.as_str());
        *last = Some(error);
        changed
    }

    /// Removes this node from the roster (at shutdown).
    pub async fn leave(&self) {
        if !self.link.is_up() {
            return;
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&self.roster_key).arg(&self.node_id);
        if let Err(error) = self.link.query::<()>(&cmd).await {
            tracing::warn!(%error, "could not remove this node from the roster");
        }
    }

    async fn supervise(self: Arc<Self>, node: Arc<Node>) {
        let mut backoff = BACKOFF_START;
        let mut attempts: u64 = 0;
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            attempts += 1;
            match self.join(&node).await {
                Ok((sink, stream)) => {
                    let first = self.counters.joins.fetch_add(1, Ordering::Relaxed) == 0;
                    let verb = if first { "joined" } else { "rejoined" };
                    tracing::info!(channel = %self.channel, attempts, "{verb} the cluster");
                    *self
                        .last_error
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                    attempts = 0;
                    backoff = BACKOFF_START;
                    last_warning = None;
                    let reason = self.listen(sink, stream, &node).await;
                    self.subscribed.store(false, Ordering::Release);
                    self.link.set_up(false);
                    if node.shutdown.is_cancelled() {
                        return;
                    }
                    self.counters
                        .subscriber_restarts
                        .fetch_add(1, Ordering::Relaxed);
                    self.set_last_error(reason.clone());
                    tracing::warn!(%reason, "lost the redis subscription: degraded until it is back");
                }
                Err(error) => {
                    self.subscribed.store(false, Ordering::Release);
                    self.link.set_up(false);
                    let changed = self.set_last_error(error.to_string());
                    // Warn when the reason changes, and once a minute while
                    // it lasts (with the count), never once per retry.
                    let due = last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY);
                    if changed || due {
                        last_warning = Some(tokio::time::Instant::now());
                        tracing::warn!(%error, attempts, "redis unavailable: running alone (degraded), retrying in the background");
                    } else {
                        tracing::debug!(%error, attempts, "redis still unavailable");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = node.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    async fn join(
        &self,
        node: &Node,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), LinkError> {
        let unavailable = |e: redis::RedisError| LinkError::Unavailable(e.to_string());
        let client = self.link.client();
        let pubsub = tokio::time::timeout(self.link.connect_timeout(), client.get_async_pubsub())
            .await
            .map_err(|_| LinkError::Timeout(self.link.connect_timeout()))?
            .map_err(unavailable)?;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(self.link.command_timeout(), sink.subscribe(&self.channel))
            .await
            .map_err(|_| LinkError::Timeout(self.link.command_timeout()))?
            .map_err(unavailable)?;
        self.rejoin(node).await?;
        Ok((sink, stream))
    }

    /// Verifies the subscription, writes local registrations back, then reports `cluster`.
    async fn rejoin(&self, node: &Node) -> Result<(), LinkError> {
        let subscribers = self.numsub().await?;
        if subscribers < 1 {
            return Err(LinkError::Unavailable(format!(
                "subscribed, but PUBSUB NUMSUB {} = {subscribers}",
                self.channel
            )));
        }
        let written = node.registry.write_back().await?;
        if written > 0 {
            tracing::info!(topics = written, "wrote local registrations to redis");
        }
        self.link.set_up(true);
        self.subscribed.store(true, Ordering::Release);
        self.write_presence(node).await;
        Ok(())
    }

    /// Delivers envelopes until the subscription fails; returns why.
    async fn listen(
        &self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
        node: &Node,
    ) -> String {
        let mut ping = tokio::time::interval(HEARTBEAT);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.receive(message.get_payload_bytes(), node).await,
                    None => return "the subscription stream closed".to_string(),
                },
                _ = ping.tick() => {
                    if let Err(reason) = self.ping(&mut sink).await {
                        return reason;
                    }
                }
                _ = self.link.trouble() => {
                    // A pooled command failed: check our own connection, then rejoin.
                    if let Err(reason) = self.ping(&mut sink).await {
                        return reason;
                    }
                    if let Err(error) = self.rejoin(node).await {
                        return format!("rejoin after a failed command: {error}");
                    }
                }
                _ = node.shutdown.cancelled() => return "shutdown".to_string(),
            }
        }
    }

    async fn ping(&self, sink: &mut redis::aio::PubSubSink) -> Result<(), String> {
        match tokio::time::timeout(self.link.command_timeout(), sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("ping failed: {error}")),
            Err(_) => Err(format!(
                "no ping answer within {:?}",
                self.link.command_timeout()
            )),
        }
    }

    async fn receive(&self, bytes: &[u8], node: &Node) {
        self.counters
            .envelopes_received
            .fetch_add(1, Ordering::Relaxed);
        match decode_envelope(bytes) {
            Ok(envelope) => {
                if envelope.origin_id.as_deref() == Some(self.node_id.as_str()) {
                    return;
                }
                let frame = crate::ws::push_frame(&envelope.payload);
                node.dispatcher.dispatch(envelope.topic, frame).await;
            }
            Err(error) => {
                self.counters
                    .envelopes_malformed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, bytes = bytes.len(), "skipped a malformed envelope");
            }
        }
    }

    async fn publish_loop(self: Arc<Self>, node: Arc<Node>) {
        let rx = Arc::clone(&self.outgoing_rx);
        let mut rx = rx.lock().await;
        let mut batch = Vec::with_capacity(128);
        loop {
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, 128) => n,
                _ = node.shutdown.cancelled() => return,
            };
            if received == 0 {
                return;
            }
            let mut pipe = redis::pipe();
            for text in batch.drain(..) {
                pipe.cmd("PUBLISH").arg(&self.channel).arg(text).ignore();
            }
            match self.link.query_pipeline::<()>(&pipe).await {
                Ok(()) => {
                    self.counters
                        .envelopes_published
                        .fetch_add(received as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters
                        .envelopes_dropped
                        .fetch_add(received as u64, Ordering::Relaxed);
                    tracing::warn!(%error, envelopes = received, "could not publish to redis");
                }
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, node: Arc<Node>) {
        // The status topic must outlive short TTLs too.
        let period = HEARTBEAT
            .min(node.registry.ttl() / 2)
            .max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_presence = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = node.shutdown.cancelled() => return,
            }
            if self.mode() != Mode::Cluster {
                continue;
            }
            if let Err(error) = node.registry.refresh_status_topic().await {
                tracing::debug!(%error, "could not refresh the status topic");
            }
            if last_presence.elapsed() >= HEARTBEAT - Duration::from_millis(100) {
                last_presence = tokio::time::Instant::now();
                self.write_presence(&node).await;
            }
        }
    }

    async fn write_presence(&self, node: &Node) {
        let entry = node.roster_entry();
        let Ok(json) = serde_json::to_string(&entry) else {
            return;
        };
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.roster_key).arg(&self.node_id).arg(json);
        if let Err(error) = self.link.query::<()>(&cmd).await {
            tracing::debug!(%error, "could not write the presence entry");
            return;
        }
        let mut all = redis::cmd("HGETALL");
        all.arg(&self.roster_key);
        if let Ok(raw) = self.link.query::<Vec<(String, String)>>(&all).await {
            let (_, prune) = presence::evaluate(raw, time::OffsetDateTime::now_utc());
            let prune: Vec<String> = prune.into_iter().filter(|id| *id != self.node_id).collect();
            if !prune.is_empty() {
                let mut del = redis::cmd("HDEL");
                del.arg(&self.roster_key).arg(&prune);
                let _ = self.link.query::<()>(&del).await;
            }
        }
    }
}

pub use presence::{hostname, rfc3339};
