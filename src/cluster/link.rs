//! The pooled Redis connection every command goes through, with a deadline on
//! each command (pool wait included) and the shared up/down state.
//!
//! A command that fails for a connection reason marks the link down and wakes
//! the supervisor, which verifies its own subscription and rejoins; the
//! registry answers from memory meanwhile. A hung Redis therefore costs a
//! request at most one `command_timeout`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, FromRedisValue};
use tokio::sync::Notify;

use crate::config::{normalize_redis_url, redact_url, Config, RedisSettings, Secret};

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The Redis settings cannot work (a TLS file that does not parse, …).
    #[error("{0}")]
    Config(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis command failed: {0}")]
    Command(String),
}

pub struct RedisLink {
    pool: Pool,
    /// The client of the subscriber's dedicated connection; the pool was
    /// built from the same connection info (TLS settings included).
    client: redis::Client,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    up: AtomicBool,
    trouble: Notify,
    failures: AtomicU64,
}

impl RedisLink {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, LinkError> {
        let client = open_client(&config.redis, url)?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(config.redis.command_timeout));
        let manager = Manager::new_with_config(client.get_connection_info().clone(), connection)
            .map_err(|e| LinkError::Config(format!("{}: {e}", redact_url(url.expose()))))?;
        let pool = Pool::builder(manager)
            .max_size(config.redis.pool_size)
            .wait_timeout(Some(config.redis.command_timeout))
            .create_timeout(Some(config.redis.connect_timeout))
            .recycle_timeout(Some(config.redis.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        Ok(RedisLink {
            pool,
            client,
            prefix: config.redis.key_prefix.clone(),
            command_timeout: config.redis.command_timeout,
            connect_timeout: config.redis.connect_timeout,
            up: AtomicBool::new(false),
            trouble: Notify::new(),
            failures: AtomicU64::new(0),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Commands that failed for a connection reason since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Resolves when a command failed for a connection reason.
    pub(super) async fn trouble(&self) {
        self.trouble.notified().await;
    }

    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LinkError> {
        self.run(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, LinkError> {
        self.run(|mut conn| async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    async fn run<T, F, Fut>(&self, command: F) -> Result<T, LinkError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| LinkError::Unavailable(e.to_string()))?;
            command(conn).await.map_err(|e| {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    LinkError::Unavailable(e.to_string())
                } else {
                    LinkError::Command(e.to_string())
                }
            })
        };
        let result = match tokio::time::timeout(self.command_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(LinkError::Timeout(self.command_timeout)),
        };
        if let Err(LinkError::Timeout(_) | LinkError::Unavailable(_)) = &result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if self.up.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "redis stopped answering: serving from the local registry until it returns"
                );
            }
            self.trouble.notify_one();
        }
        result
    }
}

/// The client for `url`: TCP, unix socket, or TLS with the system's roots or
/// the configured CA file and client certificate.
fn open_client(settings: &RedisSettings, url: &Secret) -> Result<redis::Client, LinkError> {
    install_crypto_provider();
    let text = normalize_redis_url(url.expose());
    let shown = redact_url(url.expose());
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| LinkError::Config(format!("{key} {}: {e}", path.display())))
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
    let client = if root_cert.is_some() || client_tls.is_some() {
        redis::Client::build_with_tls(
            text.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
    } else {
        redis::Client::open(text.as_str())
    };
    client.map_err(|e| LinkError::Config(format!("{shown}: {e}")))
}

/// rustls needs one process-wide crypto provider; the `redis` crate does not
/// pick one, so without this the first `rediss://` connect panics. Installing
/// twice is harmless (the first one stays).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
