//! How the effective settings are shown (`check-config`): the
//! `serialize_with` functions of `schema.rs`, and the walk that turns the
//! serialized tree into one `key: value` line per key.
//!
//! Secrets never leave here: `worker_secret` is shown as its length and
//! `redis_url` with its password replaced.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serializer;
use yaml_serde::Value;

use super::nats_url::redact_nats_url;
use super::redis_url::redact_url;
use super::{format_go_duration, Secret};

pub fn length<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    let length = secret.expose().chars().count();
    serializer.collect_str(&format_args!("({length} characters)"))
}

pub fn length_or_none<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    if secret.expose().is_empty() {
        serializer.serialize_str("(none)")
    } else {
        length(secret, serializer)
    }
}

pub fn none_if_empty<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    or_else(text, "(none)", serializer)
}

pub fn redis_url<S: Serializer>(url: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&redact_url(url.expose())),
        None => serializer.serialize_str("(none: single-instance mode)"),
    }
}

pub fn nats_url<S: Serializer>(url: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&redact_nats_url(url.expose())),
        None => serializer.serialize_str("(none)"),
    }
}

pub fn go_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_go_duration(*duration))
}

pub fn all_interfaces<S: Serializer>(bind: &str, serializer: S) -> Result<S::Ok, S::Error> {
    or_else(bind, "(all interfaces)", serializer)
}

pub fn host_name<S: Serializer>(name: &str, serializer: S) -> Result<S::Ok, S::Error> {
    or_else(name, "(the host name)", serializer)
}

pub fn system_roots<S: Serializer>(
    file: &Option<PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    shown_path(file, "(system roots)", serializer)
}

/// Address ranges, a single address without its `/32` or `/128`.
pub fn networks<S: Serializer>(
    networks: &[ipnet::IpNet],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(networks.iter().map(|net| {
        if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        }
    }))
}

pub fn path<S: Serializer>(file: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    shown_path(file, "(none)", serializer)
}

/// One `key: value` line per leaf of `tree`, in the order of the struct
/// fields, sections as dotted paths (`redis.pool_size: 16`).
pub fn lines(tree: &Value) -> String {
    leaves(tree)
        .into_iter()
        .map(|(key, value)| format!("{key}: {}", scalar(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The leaves of a config tree with their dotted key paths. Only mappings
/// are walked into: a list is one value (`limits.trusted_proxies`).
pub(super) fn leaves(tree: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(prefix: &str, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Mapping(map) => {
                for (key, value) in map {
                    let key = match key {
                        Value::String(key) => key.clone(),
                        other => scalar(other),
                    };
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, out);
                }
            }
            leaf => out.push((prefix.to_string(), leaf)),
        }
    }
    let mut out = Vec::new();
    if let Value::Mapping(_) = tree {
        walk("", tree, &mut out);
    }
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(scalar).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Mapping(_) | Value::Tagged(_) => {
            yaml_serde::to_string(value).map_or_else(|_| String::new(), |s| s.trim().to_string())
        }
    }
}

fn or_else<S: Serializer>(text: &str, empty: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if text.is_empty() { empty } else { text })
}

fn shown_path<S: Serializer>(
    file: &Option<PathBuf>,
    none: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match file {
        Some(file) => serializer.collect_str(&file.display()),
        None => serializer.serialize_str(none),
    }
}
