//! The topic registry in Redis, in the Go worker's format: key
//! `<prefix>topic:<T>` holding `{"require_token":bool}`, written with
//! `SET … EX`, removed with `DEL`, listed with `SCAN` (never `KEYS`; on a
//! Redis Cluster, on every master, as keys are spread over the slots).

use std::time::Duration;

use super::RedisBroker;
use crate::broker::link::Target;
use crate::broker::meta::{decode_meta, encode_meta};
use crate::broker::BrokerError;
use crate::topic::{TopicChange, TopicMeta};

/// Keys `SCAN` is asked for per round trip.
const SCAN_COUNT: usize = 1000;

impl RedisBroker {
    fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// A topic's meta and time left (`None` = no expiry), in one round trip.
    pub async fn topic_get(
        &self,
        topic: &str,
    ) -> Result<Option<(TopicMeta, Option<Duration>)>, BrokerError> {
        let key = self.key(topic);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (value, pttl): (Option<Vec<u8>>, i64) = self.link.query_pipeline(&pipe).await?;
        Ok(value.map(|raw| (decode_meta(&raw), remaining(pttl))))
    }

    /// Every registered topic with its meta and time left: one `SCAN` page,
    /// then one pipeline of `GET`/`PTTL` for its keys, page after page (on
    /// each master of a Redis Cluster).
    pub async fn topic_entries(
        &self,
    ) -> Result<Vec<(String, TopicMeta, Option<Duration>)>, BrokerError> {
        let mut entries = Vec::new();
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_page(node.as_deref(), cursor).await?;
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
                    }
                    let values = self.values(node.as_deref(), pipe, keys.len() * 2).await?;
                    for (key, pair) in keys.iter().zip(values.chunks(2)) {
                        let (Some(topic), [value, pttl]) =
                            (key.strip_prefix(&self.topic_prefix), pair)
                        else {
                            continue;
                        };
                        let Ok(Some(raw)) = redis::from_redis_value_ref::<Option<Vec<u8>>>(value)
                        else {
                            continue; // expired between SCAN and GET (or moved)
                        };
                        let pttl = redis::from_redis_value_ref::<i64>(pttl).unwrap_or(-1);
                        entries.push((topic.to_string(), decode_meta(&raw), remaining(pttl)));
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // SCAN may return a key twice.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        Ok(entries)
    }

    /// Where `SCAN` must run: the one server (`None`), or every master of
    /// a Redis Cluster (`host:port`), from a fresh topology.
    async fn scan_nodes(&self) -> Result<Vec<Option<String>>, BrokerError> {
        match self.link.target() {
            Target::Cluster(cluster) => Ok(cluster
                .refresh_topology(self.link.connect_timeout())
                .await?
                .masters
                .iter()
                .map(|m| Some(m.address()))
                .collect()),
            _ => Ok(vec![None]),
        }
    }

    /// A pipeline's answers, on the one server or on one cluster node.
    async fn values(
        &self,
        node: Option<&str>,
        pipe: redis::Pipeline,
        count: usize,
    ) -> Result<Vec<redis::Value>, BrokerError> {
        match (self.link.target(), node) {
            (Target::Cluster(cluster), Some(node)) => {
                self.link.pipeline_node(cluster, node, pipe, count).await
            }
            _ => self.link.query_pipeline(&pipe).await,
        }
    }

    /// One `SCAN` page of topic keys: the next cursor (0 = done) and the keys.
    async fn scan_page(
        &self,
        node: Option<&str>,
        cursor: u64,
    ) -> Result<(u64, Vec<String>), BrokerError> {
        let pattern = format!("{}*", escape_glob(&self.topic_prefix));
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        match (self.link.target(), node) {
            (Target::Cluster(cluster), Some(node)) => {
                self.link.query_node(cluster, node, cmd).await
            }
            _ => self.link.query(&cmd).await,
        }
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
        if matches!(self.link.target(), Target::Cluster(_)) {
            return self.apply_spread(changes, only_missing).await;
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

    /// On a Redis Cluster the keys are on many slots, so no one pipeline
    /// takes them: one command per change, all at once (each topic appears
    /// once in what is written back, so their order does not matter), the
    /// first error returned.
    async fn apply_spread(
        &self,
        changes: &[TopicChange],
        only_missing: bool,
    ) -> Result<(), BrokerError> {
        let commands = changes.iter().map(|change| {
            let cmd = match change {
                TopicChange::Register { topic, meta, ttl } => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(self.key(topic))
                        .arg(encode_meta(*meta))
                        .arg("EX")
                        .arg(whole_seconds(*ttl));
                    if only_missing {
                        cmd.arg("NX");
                    }
                    cmd
                }
                TopicChange::Unregister { topic } => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(self.key(topic));
                    cmd
                }
            };
            async move { self.link.query::<redis::Value>(&cmd).await }
        });
        for result in futures_util::future::join_all(commands).await {
            result?;
        }
        Ok(())
    }

    /// Every registered topic in the cluster, by `SCAN` (on every master of
    /// a Redis Cluster); sorted, and deduplicated because `SCAN` may return
    /// a key twice.
    pub async fn topics(&self) -> Result<Vec<String>, BrokerError> {
        let mut topics = Vec::new();
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self.scan_page(node.as_deref(), cursor).await?;
                topics.extend(
                    keys.into_iter()
                        .filter_map(|k| k.strip_prefix(&self.topic_prefix).map(str::to_string)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
    }
}

/// `PTTL`'s answer as time left: `None` for a key without expiry.
fn remaining(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

/// `EX` takes whole seconds: round up, so a key never expires early.
fn whole_seconds(ttl: Duration) -> u64 {
    ttl.as_millis().div_ceil(1000).max(1) as u64
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
