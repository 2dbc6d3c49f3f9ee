//! The Go-compatible Redis broker: registry keys `<prefix>topic:<T>` holding
//! `{"require_token":bool}` (`SET … EX`, `DEL`, `SCAN`, never `KEYS`),
//! envelopes on `<prefix>events` (`PUBLISH`/`SUBSCRIBE`), and the roster hash
//! `<prefix>nodes`: on one server, on the master of a Sentinel set, or on a
//! Redis Cluster, where events may instead cross sharded channels
//! `<prefix>events:<k>` (`SPUBLISH`/`SSUBSCRIBE`, a topic always on shard
//! `fnv1a64(topic) mod redis.cluster_shards`). Every command goes through
//! [`RedisLink`], so each has a deadline.

use std::time::Duration;

mod registry;
mod subscription;

pub use self::subscription::{RedisMessage, RedisSubscription};
use super::link::{key_slot, RedisLink, Target};
use super::BrokerError;
use crate::config::{ClusterPubsub, Config, Secret};

pub struct RedisBroker {
    link: RedisLink,
    topic_prefix: String,
    channel: String,
    /// The shard channels (a Redis Cluster with sharded pub/sub), else empty.
    shards: Vec<String>,
    roster_key: String,
    connects_prefix: String,
}

impl RedisBroker {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let prefix = &config.redis.key_prefix;
        let link = RedisLink::new(config, url)?;
        let channel = format!("{prefix}events");
        let shards = match (link.target(), config.redis.cluster_pubsub) {
            (Target::Cluster(_), ClusterPubsub::Sharded) => (0..config.redis.cluster_shards)
                .map(|k| format!("{channel}:{k}"))
                .collect(),
            _ => Vec::new(),
        };
        Ok(RedisBroker {
            link,
            topic_prefix: format!("{prefix}topic:"),
            channel,
            shards,
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

    /// The shard channel of `topic` (sharded pub/sub only).
    fn shard(&self, topic: &str) -> Option<&String> {
        if self.shards.is_empty() {
            return None;
        }
        let index = fnv1a64(topic.as_bytes()) % self.shards.len() as u64;
        self.shards.get(index as usize)
    }

    /// Publishes envelopes in order: one pipeline on one server (or on the
    /// Sentinel set's master), one pipeline per shard channel on a Redis
    /// Cluster with sharded pub/sub (order is kept per topic, which is
    /// always on one shard).
    ///
    /// Where this node subscribes to the same server it publishes to (a
    /// Sentinel master, a shard's owner), an envelope that reached no
    /// subscriber at all did not reach the server this node listens to
    /// (a demoted master during a failover): that is an error, and the
    /// outbox tries again once the new master answers.
    pub async fn publish(&self, envelopes: &[String]) -> Result<(), BrokerError> {
        if !self.shards.is_empty() {
            return self.publish_sharded(envelopes).await;
        }
        let mut pipe = redis::pipe();
        for text in envelopes {
            pipe.cmd("PUBLISH").arg(&self.channel).arg(text);
        }
        let receivers: Vec<i64> = self.link.query_pipeline(&pipe).await?;
        if matches!(self.link.target(), Target::Sentinel(_)) {
            check_received(&receivers, &self.channel)?;
        }
        Ok(())
    }

    async fn publish_sharded(&self, envelopes: &[String]) -> Result<(), BrokerError> {
        let mut batches: Vec<(&String, redis::Pipeline)> = Vec::new();
        for text in envelopes {
            let topic = envelope_topic(text);
            let Some(channel) = self.shard(&topic).or(self.shards.first()) else {
                continue;
            };
            let index = match batches.iter().position(|(c, _)| *c == channel) {
                Some(index) => index,
                None => {
                    batches.push((channel, redis::pipe()));
                    batches.len() - 1
                }
            };
            if let Some((_, pipe)) = batches.get_mut(index) {
                pipe.cmd("SPUBLISH").arg(channel).arg(text);
            }
        }
        let sends = batches.iter().map(|(channel, pipe)| async move {
            let receivers: Vec<i64> = self.link.query_pipeline(pipe).await?;
            check_received(&receivers, channel)
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    /// The nodes subscribed to the events, this one included: `PUBSUB
    /// NUMSUB <channel>`; on a Redis Cluster, where that count is per Redis
    /// node, `PUBSUB SHARDNUMSUB` of shard 0 on the master that owns it
    /// (every skywave node subscribes to every shard), or with classic
    /// pub/sub the sum of `NUMSUB` over every Redis node (each skywave node
    /// holds one subscription, on one of them).
    pub async fn subscribers(&self) -> Result<i64, BrokerError> {
        let Target::Cluster(cluster) = self.link.target() else {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB").arg(&self.channel);
            let (_, count): (String, i64) = self.link.query(&cmd).await?;
            return Ok(count);
        };
        let topology = cluster.known_topology(self.link.connect_timeout()).await?;
        if let Some(shard) = self.shards.first() {
            let owner = topology
                .owner(key_slot(shard.as_bytes()))
                .map(|m| m.address())
                .ok_or_else(|| BrokerError::Unavailable(format!("no master owns {shard}")))?;
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("SHARDNUMSUB").arg(shard);
            let (_, count): (String, i64) = self.link.query_node(cluster, &owner, cmd).await?;
            return Ok(count);
        }
        let mut total = 0;
        for node in &topology.nodes {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB").arg(&self.channel);
            let (_, count): (String, i64) = self.link.query_node(cluster, node, cmd).await?;
            total += count;
        }
        Ok(total)
    }

    /// The server's `run_id`: it changes when Redis restarts (and so, without
    /// persistence, when its data is gone), and when a Sentinel set switches
    /// masters. On a Redis Cluster, the masters' run ids together.
    pub async fn server_id(&self) -> Result<String, BrokerError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let Target::Cluster(cluster) = self.link.target() else {
            let info: String = self.link.query(&cmd).await?;
            return Ok(run_id(&info));
        };
        let topology = cluster.known_topology(self.link.connect_timeout()).await?;
        let mut ids = Vec::new();
        for master in &topology.masters {
            let info: String = self
                .link
                .query_node(cluster, &master.address(), cmd.clone())
                .await?;
            ids.push(run_id(&info));
        }
        ids.sort();
        Ok(ids.join(","))
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

    fn timeouts(&self) -> (Duration, Duration) {
        (self.link.connect_timeout(), self.link.command_timeout())
    }
}

fn run_id(info: &str) -> String {
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// Every envelope reached at least one subscriber.
fn check_received(receivers: &[i64], channel: &str) -> Result<(), BrokerError> {
    if receivers.contains(&0) {
        return Err(BrokerError::Unavailable(format!(
            "{channel}: an envelope reached no subscriber, not even this node's: the server \
             is not (or no longer) the one this node listens to"
        )));
    }
    Ok(())
}

/// The topic of an envelope this node encoded (shard 0's if unreadable).
fn envelope_topic(text: &str) -> std::borrow::Cow<'_, str> {
    #[derive(serde::Deserialize)]
    struct TopicOnly<'a> {
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<TopicOnly<'_>>(text)
        .map(|t| t.topic)
        .unwrap_or_default()
}

/// FNV-1a, 64 bits: the topic → shard rule, simple to repeat in any
/// language (a fleet's nodes must agree on it).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn topic_of_an_envelope() {
        let text = r#"{"origin_id":"n1","topic":"qso:7","payload":{"a":[1,2]}}"#;
        assert_eq!(envelope_topic(text), "qso:7");
        assert_eq!(envelope_topic(r#"{"topic":"a\"b","payload":1}"#), "a\"b");
        assert_eq!(envelope_topic("garbage"), "");
    }
}
