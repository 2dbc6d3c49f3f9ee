//! The Go-compatible single Redis: registry keys `<prefix>topic:<T>` holding
//! `{"require_token":bool}` (`SET … EX`, `DEL`, `SCAN`, never `KEYS`),
//! envelopes on `<prefix>events` (`PUBLISH`/`SUBSCRIBE`), and the roster hash
//! `<prefix>nodes`. Every command goes through [`RedisLink`], so each has a
//! deadline.

use std::time::Duration;

use futures_util::StreamExt;

use super::link::{classify, RedisLink};
use super::BrokerError;
use crate::config::{Config, Secret};
use crate::topic::{TopicChange, TopicMeta};

pub struct RedisBroker {
    link: RedisLink,
    topic_prefix: String,
    channel: String,
    roster_key: String,
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

#[derive(serde::Deserialize)]
struct StoredMeta {
    #[serde(default)]
    require_token: bool,
}

/// Keys `SCAN` is asked for per round trip.
const SCAN_COUNT: usize = 1000;

impl RedisBroker {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let prefix = &config.redis.key_prefix;
        Ok(RedisBroker {
            link: RedisLink::new(config, url)?,
            topic_prefix: format!("{prefix}topic:"),
            channel: format!("{prefix}events"),
            roster_key: format!("{prefix}nodes"),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
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

    pub async fn topic_get(&self, topic: &str) -> Result<Option<TopicMeta>, BrokerError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(topic));
        let value: Option<Vec<u8>> = self.link.query(&cmd).await?;
        Ok(value.map(|raw| decode_meta(&raw)))
    }

    pub async fn topic_set(
        &self,
        topic: &str,
        meta: TopicMeta,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(topic))
            .arg(encode_meta(meta))
            .arg("EX")
            .arg(whole_seconds(ttl));
        self.link.query::<()>(&cmd).await
    }

    pub async fn topic_del(&self, topic: &str) -> Result<(), BrokerError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(topic));
        self.link.query::<()>(&cmd).await
    }

    /// Applies changes in order, in one pipeline. `only_missing` writes a
    /// registration only where the key is absent (after a Redis restart,
    /// never over what another node wrote since).
    pub async fn apply(
        &self,
        changes: &[TopicChange],
        only_missing: bool,
    ) -> Result<(), BrokerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for change in changes {
            match change {
                TopicChange::Register { topic, meta, ttl } => {
                    let set = pipe
                        .cmd("SET")
                        .arg(self.key(topic))
                        .arg(encode_meta(*meta))
                        .arg("EX")
                        .arg(whole_seconds(*ttl));
                    if only_missing {
                        set.arg("NX");
                    }
                    set.ignore();
                }
                TopicChange::Unregister { topic } => {
                    pipe.cmd("DEL").arg(self.key(topic)).ignore();
                }
            }
        }
        self.link.query_pipeline::<()>(&pipe).await
    }

    /// Every registered topic in the cluster, by `SCAN`; sorted, and
    /// deduplicated because `SCAN` may return a key twice.
    pub async fn topics(&self) -> Result<Vec<String>, BrokerError> {
        let pattern = format!("{}*", escape_glob(&self.topic_prefix));
        let mut cursor: u64 = 0;
        let mut topics = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self.link.query(&cmd).await?;
            topics.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(&self.topic_prefix).map(str::to_string)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
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

/// `EX` takes whole seconds: round up, so a key never expires early.
fn whole_seconds(ttl: Duration) -> u64 {
    ttl.as_millis().div_ceil(1000).max(1) as u64
}

fn encode_meta(meta: TopicMeta) -> String {
    format!("{{\"require_token\":{}}}", meta.require_token)
}

/// A value another node wrote. Unreadable values count as private topics:
/// refusing a token-less socket is the safe side.
fn decode_meta(raw: &[u8]) -> TopicMeta {
    match serde_json::from_slice::<StoredMeta>(raw) {
        Ok(stored) => TopicMeta {
            require_token: stored.require_token,
        },
        Err(_) => TopicMeta {
            require_token: true,
        },
    }
}

/// Escapes glob metacharacters of a key prefix for `SCAN MATCH`.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_in_go_format() {
        assert_eq!(
            encode_meta(TopicMeta {
                require_token: true
            }),
            r#"{"require_token":true}"#
        );
        assert_eq!(
            decode_meta(br#"{"require_token":false}"#),
            TopicMeta {
                require_token: false
            }
        );
        assert_eq!(
            decode_meta(b"{}"),
            TopicMeta {
                require_token: false
            }
        );
        assert_eq!(
            decode_meta(b"garbage"),
            TopicMeta {
                require_token: true
            }
        );
    }

    #[test]
    fn expiry_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3600)), 3600);
    }

    #[test]
    fn glob_escaping() {
        assert_eq!(escape_glob("wavelog:topic:"), "wavelog:topic:");
        assert_eq!(escape_glob("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
