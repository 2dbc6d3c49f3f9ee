//! The broker boundary: the shared backend that makes several nodes one
//! cluster. It carries envelopes between nodes (publish, subscribe), holds
//! the shared topic registry (get/set/del/scan) and the node roster.
//!
//! An enum of backends, not trait objects: the Go-compatible Redis
//! ([`RedisBroker`], the reference: one server, a Sentinel set or a Redis
//! Cluster) and NATS ([`NatsBroker`]: core subjects and JetStream
//! key-value, for skywave-only fleets), behind the same methods. The
//! broker knows nothing of nodes, sockets or modes; `cluster` drives it and
//! sets its [`Health`], which `registry` reads.

mod envelope;
mod link;
mod meta;
mod nats;
mod redis;

use std::time::Duration;

pub use self::envelope::{
    decode as decode_envelope, encode as encode_envelope, Envelope, EnvelopeError,
};
pub use self::link::{install_crypto_provider, key_slot};
pub use self::nats::{NatsBroker, NatsMessage, NatsSubscription};
pub use self::redis::{RedisBroker, RedisMessage, RedisSubscription};
use crate::config::Config;
use crate::topic::{TopicChange, TopicMeta};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The settings cannot work (a TLS file that does not parse, …).
    #[error("{0}")]
    Config(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection (refused, reset, TLS handshake failed, …).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (OOM, READONLY, NOAUTH, …).
    #[error("redis refused the command: {0}")]
    Refused(String),
    #[error("nats did not answer within {0:?}")]
    NatsTimeout(Duration),
    /// No connection to a NATS server (or it lost JetStream, …).
    #[error("nats unavailable: {0}")]
    NatsUnavailable(String),
}

impl BrokerError {
    /// How long was waited, if the broker did not answer in time.
    pub fn timed_out(&self) -> Option<Duration> {
        match self {
            BrokerError::Timeout(after) | BrokerError::NatsTimeout(after) => Some(*after),
            _ => None,
        }
    }
}

pub enum Broker {
    Redis(RedisBroker),
    /// Boxed: the larger of the two, and a node has one broker for life.
    Nats(Box<NatsBroker>),
}

/// One subscription to the events channel.
pub enum Subscription {
    Redis(RedisSubscription),
    Nats(NatsSubscription),
}

/// One envelope as it arrived.
pub enum Message {
    Redis(RedisMessage),
    Nats(NatsMessage),
}

/// Whether the subscription is live and verified. Written by the cluster's
/// supervisor only; read by everything that must not wait on a Redis that
/// is away (registry lookups answer locally meanwhile).
pub struct Health {
    connected: tokio::sync::watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            connected: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Health {
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.send_replace(connected);
    }

    /// Resolves once connected (at once if it is).
    pub async fn wait_connected(&self) {
        let mut watch = self.connected.subscribe();
        let _ = watch.wait_for(|connected| *connected).await;
    }
}

impl Broker {
    /// The broker `redis_url` or `nats_url` names (`None`: neither is set,
    /// single-instance mode); nothing is connected yet.
    pub fn from_config(config: &Config) -> Result<Option<Broker>, BrokerError> {
        match (&config.redis_url, &config.nats_url) {
            (Some(url), _) => Ok(Some(Broker::Redis(RedisBroker::new(config, url)?))),
            (None, Some(url)) => Ok(Some(Broker::Nats(Box::new(NatsBroker::new(config, url)?)))),
            (None, None) => Ok(None),
        }
    }

    /// `redis` or `nats`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Redis(_) => "redis",
            Broker::Nats(_) => "nats",
        }
    }

    /// The events channel's name, for logs.
    pub fn channel(&self) -> &str {
        match self {
            Broker::Redis(redis) => redis.channel(),
            Broker::Nats(nats) => nats.channel(),
        }
    }

    pub async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.subscribe().await.map(Subscription::Redis),
            Broker::Nats(nats) => nats.subscribe().await.map(Subscription::Nats),
        }
    }

    pub async fn publish(&self, envelopes: &[String]) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.publish(envelopes).await,
            Broker::Nats(nats) => nats.publish(envelopes).await,
        }
    }

    /// The nodes subscribed to the events channel, this one included.
    pub async fn subscribers(&self) -> Result<i64, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.subscribers().await,
            Broker::Nats(nats) => nats.subscribers().await,
        }
    }

    /// Identifies the server instance; a change means it restarted.
    pub async fn server_id(&self) -> Result<String, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.server_id().await,
            Broker::Nats(nats) => nats.server_id().await,
        }
    }

    /// A topic's meta and time left (`None`: it does not expire).
    pub async fn topic_get(
        &self,
        topic: &str,
    ) -> Result<Option<(TopicMeta, Option<Duration>)>, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.topic_get(topic).await,
            Broker::Nats(nats) => nats.topic_get(topic).await,
        }
    }

    /// Every registered topic with its meta and time left.
    pub async fn topic_entries(
        &self,
    ) -> Result<Vec<(String, TopicMeta, Option<Duration>)>, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.topic_entries().await,
            Broker::Nats(nats) => nats.topic_entries().await,
        }
    }

    pub async fn topic_set(
        &self,
        topic: &str,
        meta: TopicMeta,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.topic_set(topic, meta, ttl).await,
            Broker::Nats(nats) => nats.topic_set(topic, meta, ttl).await,
        }
    }

    pub async fn topic_del(&self, topic: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.topic_del(topic).await,
            Broker::Nats(nats) => nats.topic_del(topic).await,
        }
    }

    pub async fn apply(
        &self,
        changes: &[TopicChange],
        only_missing: bool,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.apply(changes, only_missing).await,
            Broker::Nats(nats) => nats.apply(changes, only_missing).await,
        }
    }

    /// Every registered topic, sorted.
    pub async fn topics(&self) -> Result<Vec<String>, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.topics().await,
            Broker::Nats(nats) => nats.topics().await,
        }
    }

    /// Live registered topics (Redis: a `SCAN`; NATS: one stream-info request).
    pub async fn topic_count(&self) -> Result<usize, BrokerError> {
        match self {
            Broker::Redis(redis) => Ok(redis.topics().await?.len()),
            Broker::Nats(nats) => nats.topic_count().await,
        }
    }

    /// Counts a connect of `client` in this second, cluster-wide.
    pub async fn count_connect(&self, client: &str, second: u64) -> Result<u64, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.count_connect(client, second).await,
            Broker::Nats(nats) => nats.count_connect(client, second).await,
        }
    }

    pub async fn roster(&self) -> Result<Vec<(String, String)>, BrokerError> {
        match self {
            Broker::Redis(redis) => redis.roster().await,
            Broker::Nats(nats) => nats.roster().await,
        }
    }

    pub async fn roster_write(&self, id: &str, entry: &str) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.roster_write(id, entry).await,
            Broker::Nats(nats) => nats.roster_write(id, entry).await,
        }
    }

    pub async fn roster_remove(&self, ids: &[String]) -> Result<(), BrokerError> {
        match self {
            Broker::Redis(redis) => redis.roster_remove(ids).await,
            Broker::Nats(nats) => nats.roster_remove(ids).await,
        }
    }

    /// Resolves when a command lost its connection: the subscriber should
    /// check its own.
    pub async fn trouble(&self) {
        match self {
            Broker::Redis(redis) => redis.link().trouble().await,
            Broker::Nats(nats) => nats.trouble().await,
        }
    }

    /// Commands that failed since start.
    pub fn failures(&self) -> u64 {
        match self {
            Broker::Redis(redis) => redis.link().failures(),
            Broker::Nats(nats) => nats.failures(),
        }
    }
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            Subscription::Redis(sub) => sub.next().await.map(Message::Redis),
            Subscription::Nats(sub) => sub.next().await.map(Message::Nats),
        }
    }

    pub async fn ping(&mut self) -> Result<(), BrokerError> {
        match self {
            Subscription::Redis(sub) => sub.ping().await,
            Subscription::Nats(sub) => sub.ping().await,
        }
    }
}

impl Message {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Message::Redis(message) => message.bytes(),
            Message::Nats(message) => message.bytes(),
        }
    }
}
