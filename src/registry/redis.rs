//! The registry in Redis, in the Go worker's format: key
//! `<prefix>topic:<T>` holding `{"require_token":bool}`, written with
//! `SET … EX <ttl>`, removed with `DEL`, listed with `SCAN` (never `KEYS`).

use std::sync::Arc;
use std::time::Duration;

use super::{Registration, TopicMeta};
use crate::cluster::{LinkError, RedisLink};

pub struct RedisRegistry {
    link: Arc<RedisLink>,
    key_prefix: String,
}

#[derive(serde::Deserialize)]
struct StoredMeta {
    #[serde(default)]
    require_token: bool,
}

impl RedisRegistry {
    pub fn new(link: Arc<RedisLink>) -> Self {
        let key_prefix = format!("{}topic:", link.prefix());
        RedisRegistry { link, key_prefix }
    }

    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn key(&self, topic: &str) -> String {
        format!("{}{topic}", self.key_prefix)
    }

    pub async fn register(
        &self,
        topic: &str,
        meta: TopicMeta,
        ttl: Duration,
    ) -> Result<(), LinkError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(topic))
            .arg(encode_meta(meta))
            .arg("EX")
            .arg(whole_seconds(ttl));
        self.link.query::<()>(&cmd).await
    }

    pub async fn unregister(&self, topic: &str) -> Result<(), LinkError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(topic));
        self.link.query::<()>(&cmd).await
    }

    pub async fn lookup(&self, topic: &str) -> Result<Option<TopicMeta>, LinkError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(topic));
        let value: Option<Vec<u8>> = self.link.query(&cmd).await?;
        Ok(value.map(|raw| decode_meta(&raw)))
    }

    /// Every registered topic in the cluster, by `SCAN`; sorted, and
    /// deduplicated because `SCAN` may return a key twice.
    pub async fn list(&self) -> Result<Vec<String>, LinkError> {
        let pattern = format!("{}*", escape_glob(&self.key_prefix));
        let mut cursor: u64 = 0;
        let mut topics = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.link.query(&cmd).await?;
            topics.extend(
                keys.into_iter()
                    .filter_map(|k| k.strip_prefix(&self.key_prefix).map(str::to_string)),
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

    /// Writes registrations back after an outage, in one pipeline.
    pub async fn write_back(
        &self,
        registrations: &[Registration],
        ttl: Duration,
    ) -> Result<(), LinkError> {
        if registrations.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for registration in registrations {
            let remaining = registration.remaining.unwrap_or(ttl);
            pipe.cmd("SET")
                .arg(self.key(&registration.topic))
                .arg(encode_meta(registration.meta))
                .arg("EX")
                .arg(whole_seconds(remaining))
                .ignore();
        }
        self.link.query_pipeline::<()>(&pipe).await
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
