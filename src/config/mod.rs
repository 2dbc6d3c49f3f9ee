//! Configuration: the Go worker's YAML keys and defaults, skywave's own
//! sections (`redis:`, `limits:`, logging), and `SKYWAVE_*` environment
//! overrides for every key.
//!
//! Loading happens once at start-up (or in `skywave check-config`): the file is
//! read into a flat `key path -> YAML value` map, environment overrides replace
//! entries, each known key is converted with an error that names it, and
//! whatever is left is reported as unknown (a warning, never fatal, because a
//! config written for any Go version must load).

mod duration;
mod secret;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub use duration::{format_go_duration, format_go_seconds, parse_go_duration, DurationError};
pub use secret::Secret;

/// Minimum length of `worker_secret`, as the Go worker enforces it.
pub const MIN_SECRET_LEN: usize = 32;

/// Every key the service understands, as a dotted path. The environment
/// variable of a key is `SKYWAVE_` + the path upper-cased with `.` as `_`.
pub const KEYS: &[&str] = &[
    "ws_port",
    "ws_bind",
    "internal_port",
    "internal_bind",
    "worker_secret",
    "redis_url",
    "topic_ttl",
    "log_level",
    "log_format",
    "redis.key_prefix",
    "redis.connect_timeout",
    "redis.command_timeout",
    "redis.pool_size",
    "limits.max_sockets",
    "limits.max_sockets_per_ip",
    "limits.connect_rate_per_ip",
    "limits.trusted_proxies",
    "limits.handshake_timeout",
    "limits.auth_timeout",
    "limits.max_topic_length",
    "limits.socket_queue",
    "limits.request_timeout",
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("SKYWAVE_{}", key.to_ascii_uppercase().replace('.', "_"))
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Public WebSocket listener address; empty = every interface (IPv4 and IPv6).
    pub ws_bind: String,
    pub ws_port: u16,
    pub internal_bind: String,
    pub internal_port: u16,
    pub worker_secret: Secret,
    /// `None` = single-instance mode.
    pub redis_url: Option<Secret>,
    pub topic_ttl: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub redis: RedisSettings,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Prefix of the registry keys, the events channel and the node roster.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    /// Upper bound of one Redis command, including the wait for a pooled
    /// connection; a hung Redis never holds a request longer than this.
    pub command_timeout: Duration,
    pub pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Sockets this node holds at most (0 = no limit).
    pub max_sockets: usize,
    /// Sockets one client address holds at most (0 = no limit).
    pub max_sockets_per_ip: usize,
    /// New WebSocket connections per second one client address may open (0 = no limit).
    pub connect_rate_per_ip: u32,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Time a client has to send its complete HTTP request head.
    pub handshake_timeout: Duration,
    /// Time a socket has to send its auth frame.
    pub auth_timeout: Duration,
    pub max_topic_length: usize,
    /// Frames queued for one socket before the oldest are dropped.
    pub socket_queue: usize,
    /// Upper bound of one internal API request.
    pub request_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            key_prefix: "wavelog:".to_string(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            pool_size: 16,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sockets: 0,
            max_sockets_per_ip: 0,
            connect_rate_per_ip: 0,
            trusted_proxies: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            max_topic_length: 1024,
            socket_queue: 256,
            request_timeout: Duration::from_secs(10),
        }
    }
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
    /// Reads `path` (if any) and applies overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let mut values = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                flatten_yaml(&text).map_err(|message| ConfigError::Yaml {
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => BTreeMap::new(),
        };
        for key in KEYS {
            if let Some(value) = env(&env_name(key)) {
                values.insert((*key).to_string(), serde_yaml::Value::String(value));
            }
        }
        Self::from_values(values, path.is_none())
    }

    /// Parses YAML text directly (used by tests and the fuzzer).
    pub fn from_yaml(text: &str) -> Result<Loaded, ConfigError> {
        let values = flatten_yaml(text).map_err(|message| ConfigError::Yaml {
            path: "<text>".to_string(),
            message,
        })?;
        Self::from_values(values, false)
    }

    fn from_values(
        mut values: BTreeMap<String, serde_yaml::Value>,
        may_generate_secret: bool,
    ) -> Result<Loaded, ConfigError> {
        let mut take = |key: &str| values.remove(key).filter(|v| !v.is_null());
        let defaults_redis = RedisSettings::default();
        let defaults_limits = Limits::default();

        let ws_port = port(take("ws_port"), "ws_port", 9000)?;
        let internal_port = port(take("internal_port"), "internal_port", 9001)?;
        let ws_bind = bind(take("ws_bind"), "ws_bind", "")?;
        let internal_bind = bind(take("internal_bind"), "internal_bind", "127.0.0.1")?;

        let mut generated_secret = false;
        let worker_secret = match take("worker_secret") {
            Some(value) => Secret::new(string(value, "worker_secret")?),
            None if may_generate_secret => {
                generated_secret = true;
                Secret::generate()
            }
            None => {
                return Err(key_error(
                    "worker_secret",
                    format!(
                        "missing; it must be set to a shared secret of at least {MIN_SECRET_LEN} \
                         characters (generate one with `skywave gen-secret`)"
                    ),
                ))
            }
        };
        let secret_len = worker_secret.expose().chars().count();
        if secret_len < MIN_SECRET_LEN {
            return Err(key_error(
                "worker_secret",
                format!(
                    "must be at least {MIN_SECRET_LEN} characters, got {secret_len} \
                     (generate one with `skywave gen-secret`)"
                ),
            ));
        }

        let redis_url = match take("redis_url") {
            Some(value) => {
                let url = string(value, "redis_url")?;
                let url = url.trim().to_string();
                if url.is_empty() {
                    None
                } else {
                    validate_redis_url(&url)?;
                    Some(Secret::new(url))
                }
            }
            None => None,
        };

        let topic_ttl =
            positive_duration(take("topic_ttl"), "topic_ttl", Duration::from_secs(86_400))?;
        let log_level = match take("log_level") {
            Some(value) => string(value, "log_level")?,
            None => "info".to_string(),
        };
        let log_format = match take("log_format") {
            Some(value) => match string(value, "log_format")?.as_str() {
                "text" | "" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(key_error(
                        "log_format",
                        format!("must be \"text\" or \"json\", got {other:?}"),
                    ))
                }
            },
            None => LogFormat::Text,
        };

        let key_prefix = match take("redis.key_prefix") {
            Some(value) => string(value, "redis.key_prefix")?,
            None => defaults_redis.key_prefix,
        };
        let redis = RedisSettings {
            key_prefix,
            connect_timeout: positive_duration(
                take("redis.connect_timeout"),
                "redis.connect_timeout",
                defaults_redis.connect_timeout,
            )?,
            command_timeout: positive_duration(
                take("redis.command_timeout"),
                "redis.command_timeout",
                defaults_redis.command_timeout,
            )?,
            pool_size: count(
                take("redis.pool_size"),
                "redis.pool_size",
                defaults_redis.pool_size,
            )?
            .max(1),
        };

        let trusted_proxies = match take("limits.trusted_proxies") {
            Some(value) => ip_list(value, "limits.trusted_proxies")?,
            None => Vec::new(),
        };
        let limits = Limits {
            max_sockets: count(
                take("limits.max_sockets"),
                "limits.max_sockets",
                defaults_limits.max_sockets,
            )?,
            max_sockets_per_ip: count(
                take("limits.max_sockets_per_ip"),
                "limits.max_sockets_per_ip",
                defaults_limits.max_sockets_per_ip,
            )?,
            connect_rate_per_ip: u32::try_from(count(
                take("limits.connect_rate_per_ip"),
                "limits.connect_rate_per_ip",
                defaults_limits.connect_rate_per_ip as usize,
            )?)
            .map_err(|_| key_error("limits.connect_rate_per_ip", "is too large"))?,
            trusted_proxies,
            handshake_timeout: positive_duration(
                take("limits.handshake_timeout"),
                "limits.handshake_timeout",
                defaults_limits.handshake_timeout,
            )?,
            auth_timeout: positive_duration(
                take("limits.auth_timeout"),
                "limits.auth_timeout",
                defaults_limits.auth_timeout,
            )?,
            max_topic_length: count(
                take("limits.max_topic_length"),
                "limits.max_topic_length",
                defaults_limits.max_topic_length,
            )?
            .max(1),
            socket_queue: count(
                take("limits.socket_queue"),
                "limits.socket_queue",
                defaults_limits.socket_queue,
            )?
            .max(1),
            request_timeout: positive_duration(
                take("limits.request_timeout"),
                "limits.request_timeout",
                defaults_limits.request_timeout,
            )?,
        };

        let warnings = values
            .keys()
            .map(|key| {
                let hint = suggestion(key)
                    .map(|known| format!(" (did you mean `{known}`?)"))
                    .unwrap_or_default();
                format!("unknown config key `{key}` ignored{hint}")
            })
            .collect();

        Ok(Loaded {
            config: Config {
                ws_bind,
                ws_port,
                internal_bind,
                internal_port,
                worker_secret,
                redis_url,
                topic_ttl,
                log_level,
                log_format,
                redis,
                limits,
            },
            warnings,
            generated_secret,
        })
    }

    /// A human-readable summary with secrets redacted (`check-config`, start-up log).
    pub fn describe(&self) -> String {
        let redis = match &self.redis_url {
            Some(url) => redact_url(url.expose()),
            None => "(none: single-instance mode)".to_string(),
        };
        let ws_bind = if self.ws_bind.is_empty() {
            "(all interfaces)"
        } else {
            &self.ws_bind
        };
        format!(
            "ws_bind: {ws_bind}\nws_port: {}\ninternal_bind: {}\ninternal_port: {}\n\
             worker_secret: ({} characters)\nredis_url: {redis}\ntopic_ttl: {}\n\
             log_level: {}\nlog_format: {:?}\nredis.key_prefix: {}\nredis.connect_timeout: {}\n\
             redis.command_timeout: {}\nredis.pool_size: {}\nlimits.max_sockets: {}\n\
             limits.max_sockets_per_ip: {}\nlimits.connect_rate_per_ip: {}\n\
             limits.trusted_proxies: {:?}\nlimits.handshake_timeout: {}\nlimits.auth_timeout: {}\n\
             limits.max_topic_length: {}\nlimits.socket_queue: {}\nlimits.request_timeout: {}",
            self.ws_port,
            self.internal_bind,
            self.internal_port,
            self.worker_secret.expose().chars().count(),
            format_go_duration(self.topic_ttl),
            self.log_level,
            self.log_format,
            self.redis.key_prefix,
            format_go_duration(self.redis.connect_timeout),
            format_go_duration(self.redis.command_timeout),
            self.redis.pool_size,
            self.limits.max_sockets,
            self.limits.max_sockets_per_ip,
            self.limits.connect_rate_per_ip,
            self.limits.trusted_proxies,
            format_go_duration(self.limits.handshake_timeout),
            format_go_duration(self.limits.auth_timeout),
            self.limits.max_topic_length,
            self.limits.socket_queue,
            format_go_duration(self.limits.request_timeout),
        )
    }
}

/// `redis://user:secret@host/0` -> `redis://user:***@host/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("redis" | "rediss")) {
        return Err(key_error(
            "redis_url",
            format!(
                "{:?} is not a redis:// or rediss:// URL (expected redis://[user:pass@]host:port/db)",
                redact_url(url)
            ),
        ));
    }
    redis::Client::open(url).map(|_| ()).map_err(|error| {
        key_error(
            "redis_url",
            format!("{:?} is malformed: {error}", redact_url(url)),
        )
    })
}

fn flatten_yaml(text: &str) -> Result<BTreeMap<String, serde_yaml::Value>, String> {
    let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    match document {
        serde_yaml::Value::Null => {}
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map {
                let key = yaml_key(&key)?;
                // Only skywave's own sections nest; any other mapping value is
                // kept whole and reported by its top-level key.
                match value {
                    serde_yaml::Value::Mapping(inner) if key == "redis" || key == "limits" => {
                        for (inner_key, inner_value) in inner {
                            out.insert(format!("{key}.{}", yaml_key(&inner_key)?), inner_value);
                        }
                    }
                    other => {
                        out.insert(key, other);
                    }
                }
            }
        }
        _ => return Err("the top level must be a mapping of `key: value` lines".to_string()),
    }
    Ok(out)
}

fn yaml_key(key: &serde_yaml::Value) -> Result<String, String> {
    match key {
        serde_yaml::Value::String(s) => Ok(s.clone()),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        serde_yaml::Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("unsupported key {other:?}")),
    }
}

fn string(value: serde_yaml::Value, key: &str) -> Result<String, ConfigError> {
    match value {
        serde_yaml::Value::String(s) => Ok(s),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        serde_yaml::Value::Bool(b) => Ok(b.to_string()),
        other => Err(key_error(
            key,
            format!("expected a string, got {}", kind(&other)),
        )),
    }
}

fn kind(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "nothing",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

fn unsigned(value: serde_yaml::Value, key: &str) -> Result<u64, ConfigError> {
    match &value {
        serde_yaml::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| key_error(key, format!("expected a whole number >= 0, got {n}"))),
        serde_yaml::Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| key_error(key, format!("expected a whole number >= 0, got {s:?}"))),
        other => Err(key_error(
            key,
            format!("expected a number, got {}", kind(other)),
        )),
    }
}

fn port(value: Option<serde_yaml::Value>, key: &str, default: u16) -> Result<u16, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => {
            let n = unsigned(value, key)?;
            // 0 asks the system for a free port (tests, ad-hoc runs).
            u16::try_from(n).map_err(|_| key_error(key, format!("port must be 0..65535, got {n}")))
        }
    }
}

fn count(
    value: Option<serde_yaml::Value>,
    key: &str,
    default: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => {
            let n = unsigned(value, key)?;
            usize::try_from(n).map_err(|_| key_error(key, format!("{n} is too large")))
        }
    }
}

fn bind(value: Option<serde_yaml::Value>, key: &str, default: &str) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(default.to_string());
    };
    let text = string(value, key)?.trim().to_string();
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if text.is_empty() || bare.parse::<IpAddr>().is_ok() || bare == "localhost" {
        Ok(bare.to_string())
    } else {
        Err(key_error(
            key,
            format!(
                "{text:?} is not an IP address (use e.g. 127.0.0.1, 0.0.0.0, :: or leave it empty)"
            ),
        ))
    }
}

fn positive_duration(
    value: Option<serde_yaml::Value>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let text = match value {
        serde_yaml::Value::String(s) => s,
        serde_yaml::Value::Number(n) => {
            return Err(key_error(
                key,
                format!("{n} has no unit; write a Go duration such as 24h, 90m, 1h30m or 45s"),
            ))
        }
        other => {
            return Err(key_error(
                key,
                format!("expected a Go duration such as 24h, got {}", kind(&other)),
            ))
        }
    };
    let duration = parse_go_duration(&text).map_err(|e| key_error(key, e.to_string()))?;
    if duration.is_zero() {
        return Err(key_error(
            key,
            format!("must be greater than zero, got {text:?}"),
        ));
    }
    Ok(duration)
}

fn ip_list(value: serde_yaml::Value, key: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let items: Vec<String> = match value {
        serde_yaml::Value::Sequence(items) => items
            .into_iter()
            .map(|item| string(item, key))
            .collect::<Result<_, _>>()?,
        other => string(other, key)?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    items
        .iter()
        .map(|item| {
            item.parse::<IpAddr>()
                .map_err(|_| key_error(key, format!("{item:?} is not an IP address")))
        })
        .collect()
}

/// The known key closest to a misspelt one, for the unknown-key warning.
fn suggestion(unknown: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|known| (edit_distance(unknown, known), *known))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests;
