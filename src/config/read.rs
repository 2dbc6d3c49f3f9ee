//! How one YAML value becomes one field: the `deserialize_with` functions of
//! `schema.rs`.
//!
//! Each takes the value as YAML gave it, so the rules are the Go worker's
//! rather than serde's: a port or count may be quoted (`ws_port: "9100"`, and
//! every environment variable is a string), a duration must carry a unit, a
//! number where a string belongs is taken as its text. The messages say what
//! was wrong with the value; the loader puts the key in front of them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use serde::de::{Deserialize, Deserializer, Error};
use yaml_serde::Value;

use super::nats_url::NatsTarget;
use super::redis_url::validate_redis_url;
use super::{env_name, parse_go_duration, ClusterPubsub, LogFormat, Secret, MIN_SECRET_LEN};

pub fn port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let n = unsigned(value(deserializer)?).map_err(D::Error::custom)?;
    // 0 asks the system for a free port (tests, ad-hoc runs).
    u16::try_from(n).map_err(|_| D::Error::custom(format!("port must be 0..65535, got {n}")))
}

pub fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = unsigned(value(deserializer)?).map_err(D::Error::custom)?;
    usize::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))
}

/// A count where 0 would make no sense (a queue, a pool): 0 is taken as 1.
pub fn count_at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    count(deserializer).map(|n| n.max(1))
}

pub fn count_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    u32::try_from(count(deserializer)?).map_err(|_| D::Error::custom("is too large"))
}

/// Any scalar, as text.
/// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`, as environment
/// variables write them).
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    match value(deserializer)? {
        Value::Bool(flag) => Ok(flag),
        other => match string(other)
            .map_err(D::Error::custom)?
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            text => Err(D::Error::custom(format!(
                "expected true or false, got {text:?}"
            ))),
        },
    }
}

pub fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    string(value(deserializer)?).map_err(D::Error::custom)
}

pub fn trimmed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    text(deserializer).map(|text| text.trim().to_string())
}

/// A listener address: an IP address (brackets allowed), `localhost`, or
/// empty for every interface.
pub fn bind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = trimmed(deserializer)?;
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if text.is_empty() || bare.parse::<IpAddr>().is_ok() || bare == "localhost" {
        Ok(bare.to_string())
    } else {
        Err(D::Error::custom(format!(
            "{text:?} is not an IP address (use e.g. 127.0.0.1, 0.0.0.0, :: or leave it empty)"
        )))
    }
}

/// `worker_secret`: configured (the loader gives null when it is not), long
/// enough, and not the placeholder of the example file.
pub fn secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
    let secret = match value(deserializer)? {
        Value::Null => {
            return Err(D::Error::custom(format!(
                "missing; set it (or the environment variable {}) to the secret shared with the \
                 PHP app, at least {MIN_SECRET_LEN} characters (generate one with \
                 `skywave gen-secret`)",
                env_name("worker_secret")
            )))
        }
        other => Secret::new(string(other).map_err(D::Error::custom)?),
    };
    if is_placeholder_secret(secret.expose()) {
        return Err(D::Error::custom(
            "is the placeholder of config.example.yaml, not a secret; generate one with \
             `skywave gen-secret` and set the same value in the PHP app's worker settings",
        ));
    }
    let length = secret.expose().chars().count();
    if length < MIN_SECRET_LEN {
        return Err(D::Error::custom(format!(
            "must be at least {MIN_SECRET_LEN} characters, got {length} \
             (generate one with `skywave gen-secret`)"
        )));
    }
    Ok(secret)
}

/// A password that may be empty (= none).
pub fn optional_secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(trimmed(deserializer)?))
}

/// Shard channels of a Redis Cluster: 1..=1024.
pub fn shard_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = count(deserializer)?;
    if !(1..=1024).contains(&n) {
        return Err(D::Error::custom(format!("must be 1..1024, got {n}")));
    }
    Ok(n)
}

/// `redis_url`: empty means single-instance mode.
pub fn redis_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    let url = trimmed(deserializer)?;
    if url.is_empty() {
        return Ok(None);
    }
    validate_redis_url(&url).map_err(D::Error::custom)?;
    Ok(Some(Secret::new(url)))
}

/// `nats_url`: empty means NATS is not used.
pub fn nats_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    let url = trimmed(deserializer)?;
    if url.is_empty() {
        return Ok(None);
    }
    NatsTarget::parse(&url).map_err(D::Error::custom)?;
    Ok(Some(Secret::new(url)))
}

/// A token of NATS subjects and bucket names: letters, digits, `_` and `-`.
pub fn nats_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = trimmed(deserializer)?;
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(valid) {
        return Err(D::Error::custom(format!(
            "{name:?}: must be letters, digits, `_` or `-` (it names NATS subjects and buckets)"
        )));
    }
    Ok(name)
}

/// Copies of a JetStream stream: 1..=5.
pub fn replicas<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let n = count(deserializer)?;
    if !(1..=5).contains(&n) {
        return Err(D::Error::custom(format!("must be 1..5, got {n}")));
    }
    Ok(n)
}

/// A file name; empty means none. That the file exists is checked with the
/// rules that relate it to other keys (`validate.rs`).
pub fn path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    let text = trimmed(deserializer)?;
    Ok((!text.is_empty()).then(|| PathBuf::from(text)))
}

pub fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = match value(deserializer)? {
        Value::String(text) => text,
        Value::Number(n) => {
            return Err(D::Error::custom(format!(
                "{n} has no unit; write a Go duration such as 24h, 90m, 1h30m or 45s"
            )))
        }
        other => {
            return Err(D::Error::custom(format!(
                "expected a Go duration such as 24h, got {}",
                kind(&other)
            )))
        }
    };
    let duration = parse_go_duration(&text).map_err(D::Error::custom)?;
    if duration.is_zero() {
        return Err(D::Error::custom(format!(
            "must be greater than zero, got {text:?}"
        )));
    }
    Ok(duration)
}

/// A YAML list of addresses, or one string of comma-separated addresses (as
/// an environment variable gives it).
/// Addresses (`10.0.0.5`) or CIDR ranges (`10.0.0.0/8`, `fd00::/8`).
pub fn ip_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let items: Vec<String> = match value(deserializer)? {
        Value::Sequence(items) => items
            .into_iter()
            .map(string)
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom)?,
        other => string(other)
            .map_err(D::Error::custom)?
            .split(',')
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect(),
    };
    items
        .iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    D::Error::custom(format!(
                        "{item:?} is not an IP address or CIDR range (such as 10.0.0.5 or 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

impl<'de> Deserialize<'de> for ClusterPubsub {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match text(deserializer)?.as_str() {
            "sharded" | "" => Ok(ClusterPubsub::Sharded),
            "classic" => Ok(ClusterPubsub::Classic),
            other => Err(D::Error::custom(format!(
                "must be \"sharded\" or \"classic\", got {other:?}"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match text(deserializer)?.as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(D::Error::custom(format!(
                "must be \"text\" or \"json\", got {other:?}"
            ))),
        }
    }
}

/// The name of a YAML value's kind, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    Value::deserialize(deserializer)
}

fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, got {}", kind(&other))),
    }
}

fn unsigned(value: Value) -> Result<u64, String> {
    match &value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("expected a whole number >= 0, got {n}")),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("expected a whole number >= 0, got {s:?}")),
        other => Err(format!("expected a number, got {}", kind(other))),
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
