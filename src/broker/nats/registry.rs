//! The topic registry in the key-value bucket `<prefix>_topics`: key = the
//! topic (escaped, `keys.rs`), value = `{"require_token":bool}`.
//!
//! Expiry is the bucket's max age (= `topic_ttl`): NATS 2.9, Debian's, has
//! no per-key TTL, and every topic has the same TTL anyway. A re-register
//! is a put, which starts the age afresh; the time left of an entry is the
//! max age minus its age. An unregister purges the key's subject (no delete
//! marker stays behind), so the bucket's message count is the number of
//! live topics and a count costs one stream-info request.

use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::{keys, NatsBroker};
use crate::broker::meta::{decode_meta, encode_meta};
use crate::broker::BrokerError;
use crate::topic::{TopicChange, TopicMeta};

/// A key's latest value, as read in bulk.
pub(super) struct Stored {
    pub key: String,
    pub value: bytes::Bytes,
    pub created: time::OffsetDateTime,
}

impl NatsBroker {
    fn time_left(&self, created: time::OffsetDateTime) -> Duration {
        let age = time::OffsetDateTime::now_utc() - created;
        let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
        self.topic_ttl.saturating_sub(age)
    }

    pub async fn topic_get(
        &self,
        topic: &str,
    ) -> Result<Option<(TopicMeta, Option<Duration>)>, BrokerError> {
        let buckets = self.buckets().await?;
        let entry = self
            .within(buckets.topics.entry(keys::encode(topic)))
            .await?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| {
                let left = self.time_left(entry.created);
                (decode_meta(&entry.value), Some(left))
            }))
    }

    pub async fn topic_entries(
        &self,
    ) -> Result<Vec<(String, TopicMeta, Option<Duration>)>, BrokerError> {
        let buckets = self.buckets().await?;
        let mut entries: Vec<_> = self
            .entries(&buckets.topics)
            .await?
            .into_iter()
            .filter_map(|stored| {
                let topic = keys::decode(&stored.key)?;
                let left = self.time_left(stored.created);
                Some((topic, decode_meta(&stored.value), Some(left)))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Registers `topic`; the bucket's max age is its TTL (`ttl` is the
    /// same `topic_ttl`, or what was left of it for a write-back, which then
    /// gets the whole TTL again: a topic lives at most one TTL longer).
    pub async fn topic_set(
        &self,
        topic: &str,
        meta: TopicMeta,
        _ttl: Duration,
    ) -> Result<(), BrokerError> {
        let buckets = self.buckets().await?;
        let value = bytes::Bytes::from(encode_meta(meta));
        self.within(buckets.topics.put(keys::encode(topic), value))
            .await
            .map(|_| ())
    }

    pub async fn topic_del(&self, topic: &str) -> Result<(), BrokerError> {
        let buckets = self.buckets().await?;
        self.purge(&buckets.topics, &keys::encode(topic)).await
    }

    /// Writes changes back; with `only_missing` a registration does not
    /// replace an entry that is there (`create`, which fails if it is).
    pub async fn apply(
        &self,
        changes: &[TopicChange],
        only_missing: bool,
    ) -> Result<(), BrokerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let buckets = self.buckets().await?;
        for change in changes {
            match change {
                TopicChange::Register { topic, meta, .. } => {
                    let key = keys::encode(topic);
                    let value = bytes::Bytes::from(encode_meta(*meta));
                    if !only_missing {
                        self.within(buckets.topics.put(key, value)).await?;
                        continue;
                    }
                    let create = async {
                        match buckets.topics.create(key, value).await {
                            Ok(_) => Ok(()),
                            // There: not replaced (another node wrote it since).
                            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                                Ok(())
                            }
                            Err(error) => Err(BrokerError::NatsUnavailable(error.to_string())),
                        }
                    };
                    self.within_for(self.settings.command_timeout, create)
                        .await?;
                }
                TopicChange::Unregister { topic } => {
                    self.purge(&buckets.topics, &keys::encode(topic)).await?;
                }
            }
        }
        Ok(())
    }

    pub async fn topics(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self
            .topic_entries()
            .await?
            .into_iter()
            .map(|(topic, _, _)| topic)
            .collect())
    }

    /// Live topics: the bucket's message count (one request).
    pub async fn topic_count(&self) -> Result<usize, BrokerError> {
        let buckets = self.buckets().await?;
        let info = self.within(buckets.topics.stream.get_info()).await?;
        Ok(usize::try_from(info.state.messages).unwrap_or(usize::MAX))
    }

    /// Every key's latest value in one pass: an ordered consumer delivering
    /// the last message per subject, read until nothing is pending.
    pub(super) async fn entries(&self, store: &kv::Store) -> Result<Vec<Stored>, BrokerError> {
        let inbox = self.client().await?.new_inbox();
        let read = async {
            let consumer = store
                .stream
                .create_consumer(OrderedConfig {
                    deliver_subject: inbox,
                    filter_subject: format!("{}>", store.prefix),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    replay_policy: ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut stored = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(stored);
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| e.to_string())?;
                let info = message.info().map_err(|e| e.to_string())?;
                let (pending, created) = (info.pending, info.published);
                let put = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("KV-Operation"))
                    .is_none();
                if let (true, Some(key)) = (put, message.subject.strip_prefix(&store.prefix)) {
                    stored.push(Stored {
                        key: key.to_string(),
                        value: message.payload.clone(),
                        created,
                    });
                }
                if pending == 0 {
                    break;
                }
            }
            Ok::<_, String>(stored)
        };
        // A bulk read may take longer than one request: a few timeouts.
        let read = async { read.await.map_err(BrokerError::NatsUnavailable) };
        self.within_for(self.settings.command_timeout * 5, read)
            .await
    }
}
