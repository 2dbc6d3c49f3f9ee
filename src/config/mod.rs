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
use std::path::{Path, PathBuf};
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
    "node_name",
    "redis.key_prefix",
    "redis.connect_timeout",
    "redis.command_timeout",
    "redis.pool_size",
    "redis.tls_ca_file",
    "redis.tls_cert_file",
    "redis.tls_key_file",
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
    /// A tracing filter: a level (`info`) or directives (`info,skywave=debug`).
    pub log_level: String,
    pub log_format: LogFormat,
    /// This node's `name` in the roster; the host name when not configured.
    pub node_name: String,
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
    /// PEM file of the CA(s) that sign the `rediss://` server's certificate,
    /// instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
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
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
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
    /// Reads `path` (if any) and applies overrides from `env`. Without a
    /// configured secret this fails naming the key, unless `generate_secret`
    /// allows one for this run (a terminal, or an explicit flag).
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        generate_secret: bool,
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
                values.insert((*key).to_string(), yaml_serde::Value::String(value));
            }
        }
        Self::from_values(values, generate_secret)
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
        mut values: BTreeMap<String, yaml_serde::Value>,
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
                        "missing; set it (or the environment variable {}) to the secret shared \
                         with the PHP app, at least {MIN_SECRET_LEN} characters (generate one with \
                         `skywave gen-secret`)",
                        env_name("worker_secret")
                    ),
                ))
            }
        };
        if is_placeholder_secret(worker_secret.expose()) {
            return Err(key_error(
                "worker_secret",
                "is the placeholder of config.example.yaml, not a secret; generate one with \
                 `skywave gen-secret` and set the same value in the PHP app's worker settings",
            ));
        }
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
        let mut warnings = Vec::new();
        let log_level = match take("log_level") {
            Some(value) => {
                let text = string(value, "log_level")?;
                let (filter, warning) = log_filter(&text);
                warnings.extend(warning);
                filter
            }
            None => "info".to_string(),
        };
        let node_name = match take("node_name") {
            Some(value) => string(value, "node_name")?.trim().to_string(),
            None => String::new(),
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
            tls_ca_file: file_path(take("redis.tls_ca_file"), "redis.tls_ca_file")?,
            tls_cert_file: file_path(take("redis.tls_cert_file"), "redis.tls_cert_file")?,
            tls_key_file: file_path(take("redis.tls_key_file"), "redis.tls_key_file")?,
        };
        check_tls_files(&redis, redis_url.as_ref())?;
        if ws_port == internal_port && ws_port != 0 && binds_overlap(&ws_bind, &internal_bind) {
            return Err(key_error(
                "internal_port",
                format!(
                    "{internal_port} is also ws_port: the public and the internal listener need \
                     ports of their own (the Go defaults are 9000 and 9001)"
                ),
            ));
        }

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

        warnings.extend(values.keys().map(|key| {
            let hint = suggestion(key)
                .map(|known| format!(" (did you mean `{known}`?)"))
                .unwrap_or_default();
            format!("unknown config key `{key}` ignored{hint}")
        }));

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
                node_name,
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
             log_level: {}\nlog_format: {:?}\nnode_name: {}\nredis.key_prefix: {}\n\
             redis.connect_timeout: {}\nredis.command_timeout: {}\nredis.pool_size: {}\n\
             redis.tls_ca_file: {}\nredis.tls_cert_file: {}\nredis.tls_key_file: {}\n\
             limits.max_sockets: {}\n\
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
            if self.node_name.is_empty() {
                "(the host name)"
            } else {
                &self.node_name
            },
            self.redis.key_prefix,
            format_go_duration(self.redis.connect_timeout),
            format_go_duration(self.redis.command_timeout),
            self.redis.pool_size,
            shown_path(&self.redis.tls_ca_file, "(system roots)"),
            shown_path(&self.redis.tls_cert_file, "(none)"),
            shown_path(&self.redis.tls_key_file, "(none)"),
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

fn shown_path(path: &Option<PathBuf>, none: &str) -> String {
    path.as_ref()
        .map_or_else(|| none.to_string(), |p| p.display().to_string())
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

/// The URL schemes `redis_url` takes: TCP, TLS, and unix sockets (the forms
/// go-redis reads, so a Go config using any of them loads unchanged).
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

fn validate_redis_url(url: &str) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| REDIS_SCHEMES.contains(&scheme)) {
        return Err(key_error(
            "redis_url",
            format!(
                "{:?} is not a Redis URL (expected redis://[user:pass@]host:port/db, rediss://… \
                 for TLS, or unix:///path/to/redis.sock?db=N)",
                redact_url(url)
            ),
        ));
    }
    redis::Client::open(normalize_redis_url(url).as_str())
        .map(|_| ())
        .map_err(|error| {
            key_error(
                "redis_url",
                format!("{:?} is malformed: {error}", redact_url(url)),
            )
        })
}

/// The URL as the `redis` crate reads it. go-redis writes a unix socket's
/// credentials as `unix://user:pass@/path`; the `redis` crate takes them as
/// `?user=`/`?pass=` query parameters, so they are moved there.
pub fn normalize_redis_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if !matches!(scheme, "unix" | "redis+unix") {
        return url.to_string();
    }
    let Some((userinfo, path)) = rest.split_once("@/") else {
        return url.to_string();
    };
    let (user, pass) = match userinfo.split_once(':') {
        Some((user, pass)) => (user, Some(pass)),
        None => (userinfo, None),
    };
    let mut query = Vec::new();
    if !user.is_empty() {
        query.push(format!("user={user}"));
    }
    if let Some(pass) = pass {
        query.push(format!("pass={pass}"));
    }
    let separator = if path.contains('?') { '&' } else { '?' };
    if query.is_empty() {
        format!("{scheme}:///{path}")
    } else {
        format!("{scheme}:///{path}{separator}{}", query.join("&"))
    }
}

/// Secrets that only look like one: the placeholder of `config.example.yaml`
/// and anything else that starts with "change-me".
fn is_placeholder_secret(secret: &str) -> bool {
    secret
        .trim()
        .get(..9)
        .is_some_and(|start| start.eq_ignore_ascii_case("change-me"))
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `log_level` as a tracing filter. Common spellings of other loggers are
/// mapped (`warning`, `verbose`, `fatal`); a value that is still not a level
/// or `target=level` list would silence every log line, so it falls back to
/// `info` with a warning that names the key.
fn log_filter(text: &str) -> (String, Option<String>) {
    let level = |word: &str| -> Option<&'static str> {
        let word = word.trim().to_ascii_lowercase();
        let mapped = match word.as_str() {
            "warning" => "warn",
            "verbose" => "debug",
            "fatal" | "critical" | "panic" => "error",
            "none" | "quiet" => "off",
            other => other,
        };
        LOG_LEVELS.iter().find(|l| **l == mapped).copied()
    };
    let mut directives = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let directive = match part.rsplit_once('=') {
            Some((target, value)) if !target.trim().is_empty() => {
                level(value).map(|l| format!("{}={l}", target.trim()))
            }
            Some(_) => None,
            None => level(part).map(str::to_string),
        };
        match directive {
            Some(directive) => directives.push(directive),
            None => {
                return (
                    "info".to_string(),
                    Some(format!(
                        "config key `log_level`: {text:?} is not a level ({}) or a filter such \
                         as \"info,skywave=debug\"; logging at info",
                        LOG_LEVELS.join(", ")
                    )),
                )
            }
        }
    }
    if directives.is_empty() {
        return ("info".to_string(), None);
    }
    (directives.join(","), None)
}

fn file_path(value: Option<yaml_serde::Value>, key: &str) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = string(value, key)?.trim().to_string();
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(&text);
    std::fs::metadata(&path)
        .map_err(|error| key_error(key, format!("cannot read {text:?}: {error}")))?;
    Ok(Some(path))
}

fn check_tls_files(redis: &RedisSettings, url: Option<&Secret>) -> Result<(), ConfigError> {
    let tls_url = url.is_some_and(|url| url.expose().starts_with("rediss://"));
    for (key, file) in [
        ("redis.tls_ca_file", &redis.tls_ca_file),
        ("redis.tls_cert_file", &redis.tls_cert_file),
        ("redis.tls_key_file", &redis.tls_key_file),
    ] {
        if file.is_some() && !tls_url {
            return Err(key_error(
                key,
                "is set, but redis_url is not a rediss:// (TLS) URL",
            ));
        }
    }
    match (&redis.tls_cert_file, &redis.tls_key_file) {
        (Some(_), None) => Err(key_error(
            "redis.tls_key_file",
            "missing: redis.tls_cert_file needs its private key",
        )),
        (None, Some(_)) => Err(key_error(
            "redis.tls_cert_file",
            "missing: redis.tls_key_file needs its certificate",
        )),
        _ => Ok(()),
    }
}

/// Whether two listeners on the same port would collide: the same address,
/// or one of them on every interface.
fn binds_overlap(a: &str, b: &str) -> bool {
    let any = |bind: &str| matches!(bind, "" | "0.0.0.0" | "::");
    let loopback = |bind: &str| bind == "localhost" || bind == "127.0.0.1";
    any(a) || any(b) || a == b || (loopback(a) && loopback(b))
}

fn flatten_yaml(text: &str) -> Result<BTreeMap<String, yaml_serde::Value>, String> {
    let document: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    match document {
        yaml_serde::Value::Null => {}
        yaml_serde::Value::Mapping(map) => {
            for (key, value) in map {
                let key = yaml_key(&key)?;
                // Only skywave's own sections nest; any other mapping value is
                // kept whole and reported by its top-level key.
                match value {
                    yaml_serde::Value::Mapping(inner) if key == "redis" || key == "limits" => {
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

fn yaml_key(key: &yaml_serde::Value) -> Result<String, String> {
    match key {
        yaml_serde::Value::String(s) => Ok(s.clone()),
        yaml_serde::Value::Number(n) => Ok(n.to_string()),
        yaml_serde::Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("unsupported key {other:?}")),
    }
}

fn string(value: yaml_serde::Value, key: &str) -> Result<String, ConfigError> {
    match value {
        yaml_serde::Value::String(s) => Ok(s),
        yaml_serde::Value::Number(n) => Ok(n.to_string()),
        yaml_serde::Value::Bool(b) => Ok(b.to_string()),
        other => Err(key_error(
            key,
            format!("expected a string, got {}", kind(&other)),
        )),
    }
}

fn kind(value: &yaml_serde::Value) -> &'static str {
    match value {
        yaml_serde::Value::Null => "nothing",
        yaml_serde::Value::Bool(_) => "a boolean",
        yaml_serde::Value::Number(_) => "a number",
        yaml_serde::Value::String(_) => "a string",
        yaml_serde::Value::Sequence(_) => "a list",
        yaml_serde::Value::Mapping(_) => "a mapping",
        yaml_serde::Value::Tagged(_) => "a tagged value",
    }
}

fn unsigned(value: yaml_serde::Value, key: &str) -> Result<u64, ConfigError> {
    match &value {
        yaml_serde::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| key_error(key, format!("expected a whole number >= 0, got {n}"))),
        yaml_serde::Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| key_error(key, format!("expected a whole number >= 0, got {s:?}"))),
        other => Err(key_error(
            key,
            format!("expected a number, got {}", kind(other)),
        )),
    }
}

fn port(value: Option<yaml_serde::Value>, key: &str, default: u16) -> Result<u16, ConfigError> {
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
    value: Option<yaml_serde::Value>,
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

fn bind(value: Option<yaml_serde::Value>, key: &str, default: &str) -> Result<String, ConfigError> {
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
    value: Option<yaml_serde::Value>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let text = match value {
        yaml_serde::Value::String(s) => s,
        yaml_serde::Value::Number(n) => {
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

fn ip_list(value: yaml_serde::Value, key: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let items: Vec<String> = match value {
        yaml_serde::Value::Sequence(items) => items
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
