//! The NATS broker (`nats_url`), for skywave-only fleets (Go nodes speak
//! Redis only):
//!
//! - envelopes on the core subject `<prefix>.events`, the same JSON as on
//!   Redis; a batch counts as published once the server has answered a
//!   request sent after it on the same connection (a server handles one
//!   connection's messages in order), so a publish the server never took is
//!   retried by the outbox;
//! - the topic registry in the JetStream key-value bucket `<prefix>_topics`
//!   (`registry.rs`), the roster in `<prefix>_nodes`, the cluster-wide
//!   connect counts in `<prefix>_connects`;
//! - the connection: the client reconnects by itself; every loss (and a
//!   slow-consumer drop) is counted, and ends the subscription, so the
//!   supervisor sees it and rejoins as after a Redis loss (resync, write
//!   back).
//!
//! Nothing is connected before the first `subscribe`: a NATS that is away
//! at start means degraded mode, never a failed start.

mod keys;
mod registry;
mod subscription;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::{watch, OnceCell};

pub use self::subscription::{NatsMessage, NatsSubscription};
use super::BrokerError;
use crate::config::{Config, NatsAuth, NatsTarget, Secret};

/// Changes of the connection, counted: what ends a subscription.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    connected: bool,
    /// Losses (disconnects, slow-consumer drops) since start.
    losses: u64,
}

/// The three buckets, as created (or found) at the last join.
struct Buckets {
    topics: kv::Store,
    nodes: kv::Store,
    connects: kv::Store,
    /// When the topics bucket was created: it changes when the server lost
    /// its JetStream store (and the bucket was created afresh).
    created: String,
}

pub struct NatsBroker {
    target: NatsTarget,
    settings: crate::config::NatsSettings,
    name: String,
    topic_ttl: Duration,
    alive_window: Duration,
    prune_after: Duration,
    subject: String,
    ack_subject: String,
    ping_prefix: String,
    client: OnceCell<Client>,
    link: Arc<watch::Sender<Link>>,
    buckets: RwLock<Option<Arc<Buckets>>>,
    failures: AtomicU64,
    /// The live nodes last counted (0: never).
    last_alive: AtomicI64,
    /// Until when JetStream requests fail at once, after one timed out.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

/// How long JetStream requests fail fast after one timed out (during a
/// leader election they would each wait the whole command timeout, and a
/// join or a burst of lookups would queue behind them); then one tries.
const JETSTREAM_PAUSE: Duration = Duration::from_secs(1);

impl NatsBroker {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let target = NatsTarget::parse(url.expose()).map_err(BrokerError::Config)?;
        let prefix = &config.nats.prefix;
        Ok(NatsBroker {
            target,
            settings: config.nats.clone(),
            name: format!("skywave {}", config.node_name),
            topic_ttl: config.topic_ttl,
            alive_window: config.roster.alive_window,
            prune_after: config.roster.prune_after,
            subject: format!("{prefix}.events"),
            ack_subject: format!("{prefix}.ack"),
            ping_prefix: format!("{prefix}.ping."),
            client: OnceCell::new(),
            link: Arc::new(watch::Sender::new(Link::default())),
            buckets: RwLock::new(None),
            failures: AtomicU64::new(0),
            last_alive: AtomicI64::new(0),
            paused_until: std::sync::Mutex::new(None),
        })
    }

    pub fn channel(&self) -> &str {
        &self.subject
    }

    /// Requests that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Resolves at the next loss of the connection.
    pub async fn trouble(&self) {
        let mut link = self.link.subscribe();
        let losses = link.borrow_and_update().losses;
        let _ = link.wait_for(|now| now.losses != losses).await;
    }

    /// The client, connected on first use; afterwards it reconnects by
    /// itself, and this only checks that it is connected now.
    async fn client(&self) -> Result<&Client, BrokerError> {
        let client = self
            .client
            .get_or_try_init(|| self.connect())
            .await
            .inspect_err(|_| self.note_failure())?;
        if client.connection_state() != async_nats::connection::State::Connected {
            self.note_failure();
            return Err(BrokerError::NatsUnavailable(
                "not connected (the client is reconnecting)".to_string(),
            ));
        }
        Ok(client)
    }

    async fn connect(&self) -> Result<Client, BrokerError> {
        let settings = &self.settings;
        let link = Arc::clone(&self.link);
        let mut options = ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(settings.connect_timeout)
            .request_timeout(Some(settings.command_timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let link = Arc::clone(&link);
                async move { note_event(&link, event) }
            });
        options = match &self.target.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_string())
            }
            NatsAuth::Token(token) => options.token(token.expose().to_string()),
        };
        if !settings.token.expose().is_empty() {
            options = options.token(settings.token.expose().to_string());
        }
        if let Some(file) = &settings.creds_file {
            options = options.credentials_file(file).await.map_err(|error| {
                BrokerError::Config(format!("nats.creds_file {}: {error}", file.display()))
            })?;
        }
        if let Some(file) = &settings.nkey_seed_file {
            let seed = std::fs::read_to_string(file).map_err(|error| {
                BrokerError::Config(format!("nats.nkey_seed_file {}: {error}", file.display()))
            })?;
            options = options.nkey(seed.trim().to_string());
        }
        if self.target.tls {
            options = options.require_tls(true);
        }
        if let Some(file) = &settings.tls_ca_file {
            options = options.add_root_certificates(file.clone());
        }
        if let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .target
            .servers
            .iter()
            .map(|server| server.parse())
            .collect::<Result<_, _>>()
            .map_err(|error| BrokerError::Config(format!("nats_url: {error}")))?;
        let connecting = options.connect(servers);
        // The connect timeout is per server; the whole list gets one each.
        let budget = settings.connect_timeout * self.target.servers.len().max(1) as u32;
        match tokio::time::timeout(budget, connecting).await {
            Ok(Ok(client)) => {
                self.link.send_modify(|link| link.connected = true);
                Ok(client)
            }
            Ok(Err(error)) => Err(BrokerError::NatsUnavailable(error.to_string())),
            Err(_) => Err(BrokerError::NatsTimeout(budget)),
        }
    }

    fn note_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `future` within the command timeout; a failure is counted.
    async fn within<T, E: std::fmt::Display>(
        &self,
        future: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        let future = async {
            future
                .await
                .map_err(|error| BrokerError::NatsUnavailable(error.to_string()))
        };
        self.within_for(self.settings.command_timeout, future).await
    }

    /// `future` within `timeout`; a failure is counted, and a timeout
    /// pauses JetStream requests for a moment.
    async fn within_for<T>(
        &self,
        timeout: Duration,
        future: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(timeout, future).await {
            Ok(result) => result,
            Err(_) => {
                self.pause_jetstream();
                Err(BrokerError::NatsTimeout(timeout))
            }
        };
        if result.is_err() {
            self.note_failure();
        }
        result
    }

    fn pause_jetstream(&self) {
        if let Ok(mut until) = self.paused_until.lock() {
            *until = Some(Instant::now() + JETSTREAM_PAUSE);
        }
    }

    /// Fails at once while JetStream requests are paused.
    fn check_jetstream(&self) -> Result<(), BrokerError> {
        let paused = self
            .paused_until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| Instant::now() < until);
        if paused {
            self.note_failure();
            return Err(BrokerError::NatsUnavailable(
                "JetStream did not answer a moment ago (trying again shortly)".to_string(),
            ));
        }
        Ok(())
    }

    /// Creates the buckets, or updates them to this node's settings (the
    /// topic TTL is the topics bucket's max age): at every join, so a
    /// server that lost its store gets them back.
    async fn ensure_buckets(&self, client: &Client) -> Result<Arc<Buckets>, BrokerError> {
        self.check_jetstream()?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let topics = self.bucket(&jetstream, "topics", self.topic_ttl).await?;
        let nodes = self.bucket(&jetstream, "nodes", self.prune_after).await?;
        let connects = self.bucket(&jetstream, "connects", CONNECT_WINDOW).await?;
        let info = self.within(topics.stream.get_info()).await?;
        let buckets = Arc::new(Buckets {
            topics,
            nodes,
            connects,
            created: info.created.unix_timestamp_nanos().to_string(),
        });
        if let Ok(mut slot) = self.buckets.write() {
            *slot = Some(Arc::clone(&buckets));
        }
        Ok(buckets)
    }

    /// One bucket: its stream as the key-value convention has it (`KV_<b>`
    /// on `$KV.<b>.>`, one value per key), created, or updated when its
    /// settings differ. Through the stream API: the client's bucket calls
    /// first read the account info, whose shape NATS 2.9 does not have.
    async fn bucket(
        &self,
        jetstream: &async_nats::jetstream::Context,
        name: &str,
        max_age: Duration,
    ) -> Result<kv::Store, BrokerError> {
        use async_nats::jetstream::stream;
        let bucket = format!("{}_{name}", self.settings.prefix);
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(format!("skywave {name}")),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            storage: stream::StorageType::File,
            num_replicas: self.settings.kv_replicas,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let create = jetstream.create_stream(config.clone());
        if !matches!(
            tokio::time::timeout(self.settings.command_timeout, create).await,
            Ok(Ok(_))
        ) {
            // There with other settings (another TTL, replicas): ours win.
            // Where the create failed for another reason, so does this, and
            // its error says why.
            self.within(jetstream.update_stream(config)).await?;
        }
        self.within(jetstream.get_key_value(bucket)).await
    }

    fn has_buckets(&self) -> bool {
        self.buckets.read().is_ok_and(|slot| slot.is_some())
    }

    /// The buckets of the last join, on a connected client.
    async fn buckets(&self) -> Result<Arc<Buckets>, BrokerError> {
        self.client().await?;
        self.check_jetstream()?;
        let known = self.buckets.read().ok().and_then(|slot| slot.clone());
        known.ok_or_else(|| {
            self.note_failure();
            BrokerError::NatsUnavailable("the key-value buckets are not open yet".to_string())
        })
    }

    /// Publishes envelopes in order, then waits until the server answered a
    /// request sent after them (a `no responders` status is the answer).
    pub async fn publish(&self, envelopes: &[String]) -> Result<(), BrokerError> {
        let client = self.client().await?;
        let send = async {
            for text in envelopes {
                client
                    .publish(self.subject.clone(), bytes::Bytes::from(text.clone()))
                    .await?;
            }
            Ok::<(), async_nats::PublishError>(())
        };
        self.within(send).await?;
        self.acknowledged(client).await
    }

    /// One round trip: everything this connection sent before has been
    /// handled by the server.
    async fn acknowledged(&self, client: &Client) -> Result<(), BrokerError> {
        use async_nats::client::RequestErrorKind;
        let timeout = self.settings.command_timeout;
        let request = client.request(self.ack_subject.clone(), bytes::Bytes::new());
        let answered = async {
            match request.await {
                Ok(_) => Ok(()),
                Err(error) if error.kind() == RequestErrorKind::NoResponders => Ok(()),
                Err(error) if error.kind() == RequestErrorKind::TimedOut => {
                    Err(BrokerError::NatsTimeout(timeout))
                }
                Err(error) => Err(BrokerError::NatsUnavailable(error.to_string())),
            }
        };
        self.within_for(timeout, answered).await
    }

    /// The live nodes: roster entries written within the alive window, and
    /// at least this node, whose subscription is verified when this is
    /// asked (NATS has no count of a subject's subscribers for clients).
    ///
    /// While JetStream does not answer (a leader election after a server of
    /// a cluster went), the count last read, if there is one.
    pub async fn subscribers(&self) -> Result<i64, BrokerError> {
        let read = async {
            let buckets = self.buckets().await?;
            self.entries(&buckets.nodes).await
        };
        // One request's time at most: this is asked while joining.
        let entries = match self.within_for(self.settings.command_timeout, read).await {
            Ok(entries) => entries,
            Err(error) => {
                return match self.last_alive.load(Ordering::Relaxed) {
                    0 => Err(error),
                    last => Ok(last),
                }
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let alive = entries
            .iter()
            .filter(|entry| now - entry.created < self.alive_window)
            .count();
        let alive = alive.max(1) as i64;
        self.last_alive.store(alive, Ordering::Relaxed);
        Ok(alive)
    }

    /// Changes when the server lost its JetStream store (the topics bucket
    /// was created afresh), so the supervisor writes everything back.
    /// While JetStream does not answer, the buckets of the last join say.
    pub async fn server_id(&self) -> Result<String, BrokerError> {
        self.client().await?;
        let known = self.buckets.read().ok().and_then(|slot| slot.clone());
        known
            .map(|buckets| buckets.created.clone())
            .ok_or_else(|| BrokerError::NatsUnavailable("the buckets are not open yet".to_string()))
    }

    /// Counts one connect of `client` in `second` across the cluster: a
    /// compare-and-set on `<client>.<second>` in the connects bucket (whose
    /// entries go after two seconds, like the Redis keys).
    pub async fn count_connect(&self, client: &str, second: u64) -> Result<u64, BrokerError> {
        let buckets = self.buckets().await?;
        let store = &buckets.connects;
        let key = format!("{}.{second}", keys::encode(client));
        let counting = async {
            for _ in 0..CAS_ATTEMPTS {
                let current = store.entry(key.clone()).await.map_err(|e| e.to_string())?;
                let (count, written) = match current {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        let count = parse_count(&entry.value) + 1;
                        let value = count.to_string().into();
                        (
                            count,
                            store.update(&key, value, entry.revision).await.is_ok(),
                        )
                    }
                    _ => (1, store.create(&key, "1".into()).await.is_ok()),
                };
                if written {
                    return Ok(count);
                }
                // Another node counted at the same moment: read again.
            }
            Err(format!(
                "the connect count of {client} kept changing under {CAS_ATTEMPTS} attempts"
            ))
        };
        self.within(counting).await
    }

    /// The roster as stored: node id -> JSON entry.
    pub async fn roster(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let buckets = self.buckets().await?;
        let entries = self.entries(&buckets.nodes).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let id = keys::decode(&entry.key)?;
                Some((id, String::from_utf8_lossy(&entry.value).into_owned()))
            })
            .collect())
    }

    pub async fn roster_write(&self, id: &str, entry: &str) -> Result<(), BrokerError> {
        let buckets = self.buckets().await?;
        let value = bytes::Bytes::from(entry.to_string());
        self.within(buckets.nodes.put(keys::encode(id), value))
            .await
            .map(|_| ())
    }

    pub async fn roster_remove(&self, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let buckets = self.buckets().await?;
        for id in ids {
            self.purge(&buckets.nodes, &keys::encode(id)).await?;
        }
        Ok(())
    }

    /// Removes a key and its history without leaving a marker, so the
    /// bucket's message count stays the number of live keys.
    async fn purge(&self, store: &kv::Store, key: &str) -> Result<(), BrokerError> {
        let subject = format!("{}{key}", store.prefix);
        self.within(store.stream.purge().filter(subject).into_future())
            .await
            .map(|_| ())
    }
}

/// How long a connect count lives (the Redis keys' `EXPIRE 2`).
const CONNECT_WINDOW: Duration = Duration::from_secs(2);
/// Tries of the connect count's compare-and-set before giving up.
const CAS_ATTEMPTS: usize = 8;

/// The wait before reconnect attempt `attempts` (counted over all servers,
/// so the first try of the next server is immediate): 0, 0, then 50 ms
/// doubling to 1 s, like the supervisor's backoff.
fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => {
            let exponent = (n - 2).min(5) as u32;
            (Duration::from_millis(50) * 2u32.pow(exponent)).min(Duration::from_secs(1))
        }
    }
}

fn parse_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn note_event(link: &watch::Sender<Link>, event: Event) {
    match event {
        Event::Connected => {
            link.send_modify(|link| link.connected = true);
            tracing::debug!("nats: connected");
        }
        Event::Disconnected | Event::Closed => {
            link.send_modify(|link| {
                link.connected = false;
                link.losses += 1;
            });
            tracing::debug!(%event, "nats: connection lost");
        }
        Event::SlowConsumer(sid) => {
            // The client dropped messages of a subscription that fell
            // behind: a loss like a disconnect, so the node resyncs.
            link.send_modify(|link| link.losses += 1);
            tracing::warn!(
                sid,
                "nats: this node fell behind a subscription and messages were dropped"
            );
        }
        other => tracing::debug!(event = %other, "nats: event"),
    }
}
