//! Configuration: the Go worker's YAML keys and defaults, skywave's own
//! sections (`redis:`, `limits:`, logging), and `SKYWAVE_*` environment
//! overrides for every key.
//!
//! `schema.rs` is the one description of the keys (types, defaults, how each
//! is read and shown); `load.rs` reads a file and the environment into it,
//! `read.rs` and `show.rs` convert single values, `validate.rs` checks the
//! rules between keys. Loading happens once at start-up (or in
//! `skywave check-config`); the rest of the service only reads `Config`.

mod duration;
mod load;
mod log_level;
mod nats_url;
mod read;
mod redis_url;
mod schema;
mod secret;
mod show;
mod validate;

pub use duration::{format_go_duration, format_go_seconds, parse_go_duration, DurationError};
pub use load::keys;
pub use nats_url::{redact_nats_url, NatsAuth, NatsTarget};
pub use redis_url::{normalize_redis_url, redact_url, Credentials, RedisTarget};
pub use schema::{
    ClusterPubsub, Config, Limits, LogFormat, NatsSettings, RedisSettings, RosterSettings,
    DEFAULT_MAX_FRAME_AGE,
};
pub use secret::Secret;

/// Minimum length of `worker_secret`, as the Go worker enforces it.
pub const MIN_SECRET_LEN: usize = 32;

/// The environment variable that overrides `key` (a dotted path from
/// [`keys`]): `SKYWAVE_` + the path upper-cased with `.` as `_`.
pub fn env_name(key: &str) -> String {
    format!("SKYWAVE_{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// A configuration together with what the operator should be told about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
    /// No secret was configured anywhere and no config file was given, so one
    /// was generated for this run (good for trying things out only).
    pub generated_secret: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Config {
    /// The effective settings, one `key: value` line per key, secrets
    /// redacted (`check-config`, start-up log).
    pub fn describe(&self) -> String {
        show::lines(&yaml_serde::to_value(self).expect("plain structs serialize"))
    }
}

#[cfg(test)]
mod tests;
