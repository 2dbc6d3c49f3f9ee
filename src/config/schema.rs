//! The configuration as one struct tree: every key, its type, its default,
//! how its YAML value is read and how `check-config` shows it.
//!
//! This is the only list of keys. The loader derives everything else from it
//! by serializing the defaults to a YAML tree and walking that: the known keys
//! (for unknown-key warnings), the `SKYWAVE_*` variables, the `check-config`
//! lines, and the test that `config.example.yaml` documents every key. A field
//! added here is therefore read from the file, overridable from the
//! environment and shown, or it fails to compile for want of a default.
//!
//! `Serialize` writes the effective settings for a person to read (secrets
//! redacted, durations in Go syntax, what an empty value means in brackets);
//! it is not meant to be read back.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{read, show, Secret};

/// Everything a node is configured with. Built only by the loader
/// (`Config::load`, `Config::from_yaml`), which checks every value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default = "Config::defaults")]
pub struct Config {
    /// Public WebSocket listener address; empty = every interface (IPv4 and IPv6).
    #[serde(
        deserialize_with = "read::bind",
        serialize_with = "show::all_interfaces"
    )]
    pub ws_bind: String,
    #[serde(deserialize_with = "read::port")]
    pub ws_port: u16,
    #[serde(deserialize_with = "read::bind")]
    pub internal_bind: String,
    #[serde(deserialize_with = "read::port")]
    pub internal_port: u16,
    #[serde(deserialize_with = "read::secret", serialize_with = "show::length")]
    pub worker_secret: Secret,
    /// `None` = single-instance mode.
    #[serde(
        deserialize_with = "read::redis_url",
        serialize_with = "show::redis_url"
    )]
    pub redis_url: Option<Secret>,
    /// NATS servers instead of Redis (a skywave-only fleet); `None` = not used.
    #[serde(deserialize_with = "read::nats_url", serialize_with = "show::nats_url")]
    pub nats_url: Option<Secret>,
    #[serde(with = "go_duration")]
    pub topic_ttl: Duration,
    /// A tracing filter: a level (`info`) or directives (`info,skywave=debug`).
    #[serde(deserialize_with = "read::text")]
    pub log_level: String,
    pub log_format: LogFormat,
    /// This node's `name` in the roster; the host name when not configured.
    #[serde(deserialize_with = "read::trimmed", serialize_with = "show::host_name")]
    pub node_name: String,
    pub redis: RedisSettings,
    pub nats: NatsSettings,
    pub limits: Limits,
    pub roster: RosterSettings,
}

/// The node roster's timing (Go 0.3.0's values by default: change them only
/// on every node of a fleet at once, Go nodes cannot).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RosterSettings {
    /// How often a node rewrites its roster entry.
    #[serde(with = "go_duration")]
    pub heartbeat: Duration,
    /// A node is alive while its entry is younger than this.
    #[serde(with = "go_duration")]
    pub alive_window: Duration,
    /// Entries older than this are removed.
    #[serde(with = "go_duration")]
    pub prune_after: Duration,
}

impl Default for RosterSettings {
    fn default() -> Self {
        RosterSettings {
            heartbeat: Duration::from_secs(5),
            alive_window: Duration::from_secs(15),
            prune_after: Duration::from_secs(15 * 60),
        }
    }
}

/// `text` or `json` (read in `read.rs`, where an empty value is `text` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Prefix of the registry keys, the events channel and the node roster.
    #[serde(deserialize_with = "read::text")]
    pub key_prefix: String,
    #[serde(with = "go_duration")]
    pub connect_timeout: Duration,
    /// Upper bound of one Redis command, including the wait for a pooled
    /// connection; a hung Redis never holds a request longer than this.
    #[serde(with = "go_duration")]
    pub command_timeout: Duration,
    #[serde(deserialize_with = "read::count_at_least_one")]
    pub pool_size: usize,
    /// PEM file of the CA(s) that sign the `rediss://` server's certificate,
    /// instead of the system's roots.
    #[serde(deserialize_with = "read::path", serialize_with = "show::system_roots")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub tls_key_file: Option<PathBuf>,
    /// `redis+sentinel://` only: the sentinels' own ACL user and password
    /// (the URL's credentials are the master's).
    #[serde(
        deserialize_with = "read::trimmed",
        serialize_with = "show::none_if_empty"
    )]
    pub sentinel_username: String,
    #[serde(
        deserialize_with = "read::optional_secret",
        serialize_with = "show::length_or_none"
    )]
    pub sentinel_password: Secret,
    /// `redis+cluster://` only: shard channels the events are spread over
    /// (`<prefix>events:{<k>}`, a topic always on the same one); the same on
    /// every node of a fleet.
    #[serde(deserialize_with = "read::shard_count")]
    pub cluster_shards: usize,
    /// `redis+cluster://` only: `sharded` (SPUBLISH/SSUBSCRIBE, Redis 7+: a
    /// publish crosses one shard) or `classic` (PUBLISH on `<prefix>events`,
    /// which Redis Cluster copies to every node; what Go nodes speak).
    pub cluster_pubsub: ClusterPubsub,
}

/// The NATS broker (`nats_url`): subjects, buckets, credentials, TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct NatsSettings {
    /// First token of the subjects (`<prefix>.events`) and of the key-value
    /// buckets (`<prefix>_topics`, `<prefix>_nodes`, `<prefix>_connects`).
    #[serde(deserialize_with = "read::nats_name")]
    pub prefix: String,
    #[serde(with = "go_duration")]
    pub connect_timeout: Duration,
    /// Upper bound of one NATS request (a key-value read or write, the
    /// acknowledgement of a publish).
    #[serde(with = "go_duration")]
    pub command_timeout: Duration,
    /// Token authentication (or put it in the URL: `nats://token@host`).
    #[serde(
        deserialize_with = "read::optional_secret",
        serialize_with = "show::length_or_none"
    )]
    pub token: Secret,
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes them.
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU…`).
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub nkey_seed_file: Option<PathBuf>,
    /// PEM CA(s) of the servers' certificates, instead of the system's roots.
    #[serde(deserialize_with = "read::path", serialize_with = "show::system_roots")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::path", serialize_with = "show::path")]
    pub tls_key_file: Option<PathBuf>,
    /// Copies of each key-value bucket in a NATS cluster (1..5; 3 for a
    /// three-server cluster, so the registry survives a server).
    #[serde(deserialize_with = "read::replicas")]
    pub kv_replicas: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            prefix: "wavelog".to_string(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            token: Secret::new(""),
            creds_file: None,
            nkey_seed_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            kv_replicas: 1,
        }
    }
}

/// How events cross a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterPubsub {
    Sharded,
    Classic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// Sockets this node holds at most (0 = no limit).
    #[serde(deserialize_with = "read::count")]
    pub max_sockets: usize,
    /// Sockets one client address holds at most (0 = no limit).
    #[serde(deserialize_with = "read::count")]
    pub max_sockets_per_ip: usize,
    /// New WebSocket connections per second one client address may open (0 = no limit).
    #[serde(deserialize_with = "read::count_u32")]
    pub connect_rate_per_ip: u32,
    /// New WebSocket connections per second one client address may open
    /// across the whole cluster (0 = no limit); counted in Redis, and on
    /// each node alone while Redis is away.
    #[serde(deserialize_with = "read::count_u32")]
    pub cluster_connect_rate_per_ip: u32,
    /// Connection logs (connect, auth, close) at info instead of debug.
    #[serde(deserialize_with = "read::flag")]
    pub log_connections: bool,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` are believed.
    #[serde(deserialize_with = "read::ip_list", serialize_with = "show::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time a client has to send its complete HTTP request head.
    #[serde(with = "go_duration")]
    pub handshake_timeout: Duration,
    /// Time a socket has to send its auth frame.
    #[serde(with = "go_duration")]
    pub auth_timeout: Duration,
    #[serde(deserialize_with = "read::count_at_least_one")]
    pub max_topic_length: usize,
    /// Frames queued for one socket before the oldest are dropped.
    #[serde(deserialize_with = "read::count_at_least_one")]
    pub socket_queue: usize,
    /// A publish older than this (from when it was queued for fan-out),
    /// still in the fan-out queue or in a socket's queue, is dropped instead
    /// of sent, and reported in the socket's next `lagged`. The node stops
    /// handing a frame out a little before (`hub::delivery_allowance`: 1/50
    /// of it, at most 20 ms), the time its way into the client's socket may
    /// take, so that frames arrive within it.
    #[serde(with = "go_duration")]
    pub max_frame_age: Duration,
    /// Upper bound of one internal API request.
    #[serde(with = "go_duration")]
    pub request_timeout: Duration,
}

impl Config {
    /// The Go worker's defaults, and skywave's for its own keys. The secret
    /// has none: the loader refuses to start without one (or generates one
    /// when asked to), so this value never leaves the loader with it empty.
    pub(super) fn defaults() -> Config {
        Config {
            ws_bind: String::new(),
            ws_port: 9000,
            internal_bind: "127.0.0.1".to_string(),
            internal_port: 9001,
            worker_secret: Secret::new(""),
            redis_url: None,
            nats_url: None,
            topic_ttl: Duration::from_secs(86_400),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            node_name: String::new(),
            redis: RedisSettings::default(),
            nats: NatsSettings::default(),
            limits: Limits::default(),
            roster: RosterSettings::default(),
        }
    }
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
            sentinel_username: String::new(),
            sentinel_password: Secret::new(""),
            cluster_shards: 16,
            cluster_pubsub: ClusterPubsub::Sharded,
        }
    }
}

/// `limits.max_frame_age` when not configured.
pub const DEFAULT_MAX_FRAME_AGE: Duration = Duration::from_secs(1);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sockets: 0,
            max_sockets_per_ip: 0,
            connect_rate_per_ip: 0,
            cluster_connect_rate_per_ip: 0,
            log_connections: false,
            trusted_proxies: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            max_topic_length: 1024,
            socket_queue: 256,
            max_frame_age: DEFAULT_MAX_FRAME_AGE,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Every duration key: a Go duration string greater than zero, shown in Go
/// syntax (`24h0m0s`).
mod go_duration {
    pub use super::read::positive_duration as deserialize;
    pub use super::show::go_duration as serialize;
}
