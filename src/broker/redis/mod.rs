//! The Go-compatible single Redis: registry keys `<prefix>topic:<T>` holding
//! `{"require_token":bool}` (`SET … EX`, `DEL`, `SCAN`, never `KEYS`),
//! envelopes on `<prefix>events` (`PUBLISH`/`SUBSCRIBE`), and the roster hash
//! `<prefix>nodes`. Every command goes through [`RedisLink`], so each has a
//! deadline.

use std::time::Duration;

use futures_util::StreamExt;

mod registry;

use super::link::{classify, RedisLink};
use super::BrokerError;
use crate::config::{Config, Secret};

pub struct RedisBroker {
    link: RedisLink,
    topic_prefix: String,
    channel: String,
    roster_key: String,
    connects_prefix: String,
}

/// The dedicated subscriber connection: envelopes in, pings out.
pub struct RedisSubscription {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    timeout: Duration,
}

/// One message from the channel, read in place (no copy).
pub struct RedisMessage(redis::Msg);

impl RedisMessage {
    pub fn bytes(&self) -> &[u8] {
        self.0.get_payload_bytes()
    }
}

impl RedisBroker {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let prefix = &config.redis.key_prefix;
        Ok(RedisBroker {
            link: RedisLink::new(config, url)?,
            topic_prefix: format!("{prefix}topic:"),
            channel: format!("{prefix}events"),
            roster_key: format!("{prefix}nodes"),
            connects_prefix: prefix.to_string(),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// A dedicated connection subscribed to the events channel.
    pub async fn subscribe(&self) -> Result<RedisSubscription, BrokerError> {
        let connect = self.link.connect_timeout();
        let timeout = self.link.command_timeout();
        let pubsub = tokio::time::timeout(connect, self.link.client().get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout(connect))?
            .map_err(classify)?;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(timeout, sink.subscribe(&self.channel))
            .await
            .map_err(|_| BrokerError::Timeout(timeout))?
            .map_err(classify)?;
        Ok(RedisSubscription {
            sink,
            stream,
            timeout,
        })
    }

    /// Publishes envelopes in order, in one pipeline.
    pub async fn publish(&self, envelopes: &[String]) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for text in envelopes {
            pipe.cmd("PUBLISH").arg(&self.channel).arg(text).ignore();
        }
        self.link.query_pipeline::<()>(&pipe).await
    }

    /// `PUBSUB NUMSUB <channel>`: the nodes subscribed, this one included.
    pub async fn subscribers(&self) -> Result<i64, BrokerError> {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&self.channel);
        let (_, count): (String, i64) = self.link.query(&cmd).await?;
        Ok(count)
    }

    /// The server's `run_id`: it changes when Redis restarts (and so, without
    /// persistence, when its data is gone).
    pub async fn server_id(&self) -> Result<String, BrokerError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info: String = self.link.query(&cmd).await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string())
            .unwrap_or_default())
    }

    /// Counts one connect of `client` in the current second, cluster-wide;
    /// returns the count so far (one round trip: INCR and EXPIRE).
    pub async fn count_connect(&self, client: &str, second: u64) -> Result<u64, BrokerError> {
        let key = format!("{}connects:{client}:{second}", self.connects_prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("INCR")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(2)
            .ignore();
        let (count,): (u64,) = self.link.query_pipeline(&pipe).await?;
        Ok(count)
    }

    /// The roster hash as stored: field (node id) -> JSON entry.
    pub async fn roster(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&self.roster_key);
        self.link.query(&cmd).await
    }

    pub async fn roster_write(&self, id: &str, entry: &str) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.roster_key).arg(id).arg(entry);
        self.link.query::<()>(&cmd).await
    }

    pub async fn roster_remove(&self, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&self.roster_key).arg(ids);
        self.link.query::<()>(&cmd).await
    }
}

impl RedisSubscription {
    /// The next envelope; `None` once the subscription is gone.
    pub async fn next(&mut self) -> Option<RedisMessage> {
        self.stream.next().await.map(RedisMessage)
    }

    /// A round trip on the subscriber's own connection.
    pub async fn ping(&mut self) -> Result<(), BrokerError> {
        match tokio::time::timeout(self.timeout, self.sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(classify(error)),
            Err(_) => Err(BrokerError::Timeout(self.timeout)),
        }
    }
}
