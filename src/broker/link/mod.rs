//! The Redis connections every registry, roster and publish command goes
//! through, with a deadline on each command (pool wait included), for the
//! three shapes `redis_url` names: one server, a Sentinel set (the current
//! master, found through the sentinels and replaced when they switch), and
//! a Redis Cluster (one connection that follows slots, MOVED and ASK).
//!
//! A failed command never changes the node's mode by itself (a slow command
//! is not a dead Redis): it is counted, and a connection-level failure wakes
//! the subscriber, which checks its own connection and decides.

mod cluster;
mod sentinel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, FromRedisValue, IntoConnectionInfo};
use tokio::sync::Notify;

pub use self::cluster::{key_slot, ClusterLink};

pub use self::sentinel::{SentinelSet, Shared as SentinelShared};
use super::BrokerError;
use crate::config::{redact_url, Config, Credentials, RedisSettings, RedisTarget, Secret};

pub struct RedisLink {
    target: Target,
    command_timeout: Duration,
    connect_timeout: Duration,
    trouble: Notify,
    failures: AtomicU64,
}

pub enum Target {
    /// One server, fixed.
    Direct(Arc<Direct>),
    /// The master a Sentinel set names, replaced when it changes.
    Sentinel(SentinelSet),
    Cluster(Box<ClusterLink>),
}

/// One server: pooled connections for commands, and the client for the
/// subscriber's dedicated connection, built from the same connection info
/// (TLS settings included).
pub struct Direct {
    pool: Pool,
    client: redis::Client,
    /// `host:port` (or the socket path), for logs and comparisons.
    address: String,
}

impl Direct {
    fn new(client: redis::Client, settings: &RedisSettings) -> Result<Direct, BrokerError> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout));
        let address = client.get_connection_info().addr().to_string();
        let manager = Manager::new_with_config(client.get_connection_info().clone(), connection)
            .map_err(|e| BrokerError::Config(format!("{address}: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .wait_timeout(Some(settings.command_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(Direct {
            pool,
            client,
            address,
        })
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}

impl RedisLink {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let shown = redact_url(url.expose());
        let target = RedisTarget::parse(url.expose())
            .map_err(|e| BrokerError::Config(format!("redis_url: {e}")))?;
        let settings = &config.redis;
        let target = match target {
            RedisTarget::Single(text) => {
                let client = open_client(settings, text.as_str(), &shown)?;
                Target::Direct(Arc::new(Direct::new(client, settings)?))
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                db,
                auth,
                tls,
            } => Target::Sentinel(SentinelSet::new(
                settings, sentinels, master, db, auth, tls,
            )?),
            RedisTarget::Cluster { seeds, auth, tls } => {
                Target::Cluster(Box::new(ClusterLink::new(settings, seeds, auth, tls)?))
            }
        };
        Ok(RedisLink {
            target,
            command_timeout: settings.command_timeout,
            connect_timeout: settings.connect_timeout,
            trouble: Notify::new(),
            failures: AtomicU64::new(0),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The server commands go to now (`None`: a Redis Cluster, or no
    /// master known yet).
    pub fn direct(&self) -> Result<Arc<Direct>, BrokerError> {
        match &self.target {
            Target::Direct(direct) => Ok(Arc::clone(direct)),
            Target::Sentinel(set) => set.current(),
            Target::Cluster(_) => Err(BrokerError::Config(
                "a Redis Cluster has no single server".to_string(),
            )),
        }
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Commands that failed (timed out, lost their connection, or were
    /// refused by Redis) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Resolves when a command lost its connection (or could not get one).
    pub async fn trouble(&self) {
        self.trouble.notified().await;
    }

    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        self.send(cmd).await
    }

    /// A pipeline; on a Redis Cluster every command of it must name keys
    /// of one slot.
    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        self.send(pipe).await
    }

    /// A command or a pipeline, on the cluster connection or a pooled one.
    async fn send<T: FromRedisValue>(&self, request: &impl Request) -> Result<T, BrokerError> {
        self.guard(async {
            match &self.target {
                Target::Cluster(cluster) => {
                    let mut conn = cluster.connection(self.connect_timeout).await?;
                    request.send(&mut conn).await.map_err(|e| cluster.failed(e))
                }
                _ => {
                    let mut conn = self.pooled().await?;
                    request.send(&mut conn).await.map_err(classify)
                }
            }
        })
        .await
    }

    /// A command to one node of a Redis Cluster (by `host:port`).
    pub async fn query_node<T: FromRedisValue>(
        &self,
        cluster: &ClusterLink,
        node: &str,
        cmd: redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.guard(cluster.query_node(node, cmd, self.connect_timeout))
            .await
    }

    /// A pipeline to one node of a Redis Cluster (keys of any slots it owns).
    pub async fn pipeline_node(
        &self,
        cluster: &ClusterLink,
        node: &str,
        pipe: redis::Pipeline,
        count: usize,
    ) -> Result<Vec<redis::Value>, BrokerError> {
        self.guard(cluster.pipeline_node(node, pipe, count, self.connect_timeout))
            .await
    }

    async fn pooled(&self) -> Result<deadpool_redis::Connection, BrokerError> {
        self.direct()?
            .pool
            .get()
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    /// The deadline and the bookkeeping of every command.
    async fn guard<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(self.command_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout(self.command_timeout)),
        };
        if let Err(error) = &result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if matches!(error, BrokerError::Unavailable(_)) {
                self.trouble.notify_one();
            }
        }
        result
    }
}

/// What `RedisLink::send` sends: a command or a pipeline.
trait Request: Sync {
    fn send<T: FromRedisValue>(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + Send;
}

impl Request for redis::Cmd {
    fn send<T: FromRedisValue>(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + Send {
        self.query_async::<T>(conn)
    }
}

impl Request for redis::Pipeline {
    fn send<T: FromRedisValue>(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> impl std::future::Future<Output = redis::RedisResult<T>> + Send {
        self.query_async::<T>(conn)
    }
}

/// A Redis future with a deadline: its own error classified, the deadline
/// as `Timeout`.
pub async fn within<T>(
    deadline: Duration,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(deadline, future)
        .await
        .map_err(|_| BrokerError::Timeout(deadline))?
        .map_err(classify)
}

/// Connection trouble and a Redis that answered "no" are different things:
/// the first may heal by reconnecting, the second (OOM, NOAUTH…) needs an
/// operator. A server that is not (or not yet) the master of its data
/// (READONLY: a demoted master during a failover; MASTERDOWN, LOADING,
/// TRYAGAIN, CLUSTERDOWN) heals by itself too.
pub fn classify(error: redis::RedisError) -> BrokerError {
    let transient_refusal = error.code().is_some_and(|code| {
        matches!(
            code,
            "READONLY" | "MASTERDOWN" | "LOADING" | "TRYAGAIN" | "CLUSTERDOWN"
        )
    });
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || transient_refusal
    {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Refused(error.to_string())
    }
}

/// The client for one server (`info`: a URL or an address): TCP, unix
/// socket, or TLS with the system's roots or the configured CA file and
/// client certificate.
pub(super) fn open_client<T: IntoConnectionInfo>(
    settings: &RedisSettings,
    info: T,
    shown: &str,
) -> Result<redis::Client, BrokerError> {
    install_crypto_provider();
    let client = match tls_certificates(settings)? {
        Some(certificates) => redis::Client::build_with_tls(info, certificates),
        None => redis::Client::open(info),
    };
    client.map_err(|e| BrokerError::Config(format!("{shown}: {e}")))
}

/// The configured CA file and client certificate, if any.
fn tls_certificates(
    settings: &RedisSettings,
) -> Result<Option<redis::TlsCertificates>, BrokerError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| BrokerError::Config(format!("{key} {}: {e}", path.display())))
    };
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read("redis.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", cert)?,
            client_key: read("redis.tls_key_file", key)?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// The connection info of `host:port` with `auth` and `db`, over TLS when
/// `tls`.
pub(super) fn server_info(
    host: &str,
    port: u16,
    auth: &Credentials,
    db: i64,
    tls: bool,
    protocol: redis::ProtocolVersion,
) -> Result<redis::ConnectionInfo, BrokerError> {
    let addr = if tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_string(), port)
    };
    let mut redis_settings = redis::RedisConnectionInfo::default()
        .set_db(db)
        .set_protocol(protocol);
    if let Some(user) = &auth.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &auth.password {
        redis_settings = redis_settings.set_password(password);
    }
    Ok(addr
        .into_connection_info()
        .map_err(|e| BrokerError::Config(format!("{host}:{port}: {e}")))?
        .set_redis_settings(redis_settings))
}

/// rustls needs one process-wide crypto provider; the `redis` crate does not
/// pick one, so without this the first `rediss://` connect panics. Installing
/// twice is harmless (the first one stays).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
