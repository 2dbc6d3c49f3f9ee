//! The pooled Redis connections every registry, roster and publish command
//! goes through, with a deadline on each command (pool wait included).
//!
//! A failed command never changes the node's mode by itself (a slow command
//! is not a dead Redis): it is counted, and a connection-level failure wakes
//! the subscriber, which checks its own connection and decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, FromRedisValue};
use tokio::sync::Notify;

use super::BrokerError;
use crate::config::{normalize_redis_url, redact_url, Config, RedisSettings, Secret};

pub struct RedisLink {
    pool: Pool,
    /// The client of the subscriber's dedicated connection; the pool was
    /// built from the same connection info (TLS settings included).
    client: redis::Client,
    command_timeout: Duration,
    connect_timeout: Duration,
    trouble: Notify,
    failures: AtomicU64,
}

impl RedisLink {
    pub fn new(config: &Config, url: &Secret) -> Result<Self, BrokerError> {
        let client = open_client(&config.redis, url)?;
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(config.redis.command_timeout));
        let manager = Manager::new_with_config(client.get_connection_info().clone(), connection)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", redact_url(url.expose()))))?;
        let pool = Pool::builder(manager)
            .max_size(config.redis.pool_size)
            .wait_timeout(Some(config.redis.command_timeout))
            .create_timeout(Some(config.redis.connect_timeout))
            .recycle_timeout(Some(config.redis.command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        Ok(RedisLink {
            pool,
            client,
            command_timeout: config.redis.command_timeout,
            connect_timeout: config.redis.connect_timeout,
            trouble: Notify::new(),
            failures: AtomicU64::new(0),
        })
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
        self.run(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        self.run(|mut conn| async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    async fn run<T, F, Fut>(&self, command: F) -> Result<T, BrokerError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            command(conn).await.map_err(classify)
        };
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

/// Connection trouble and a Redis that answered "no" are different things:
/// the first may heal by reconnecting, the second (OOM, READONLY, NOAUTH…)
/// needs an operator.
pub fn classify(error: redis::RedisError) -> BrokerError {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
    {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Refused(error.to_string())
    }
}

/// The client for `url`: TCP, unix socket, or TLS with the system's roots or
/// the configured CA file and client certificate.
fn open_client(settings: &RedisSettings, url: &Secret) -> Result<redis::Client, BrokerError> {
    install_crypto_provider();
    let text = normalize_redis_url(url.expose());
    let shown = redact_url(url.expose());
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
    client.map_err(|e| BrokerError::Config(format!("{shown}: {e}")))
}

/// rustls needs one process-wide crypto provider; the `redis` crate does not
/// pick one, so without this the first `rediss://` connect panics. Installing
/// twice is harmless (the first one stays).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
