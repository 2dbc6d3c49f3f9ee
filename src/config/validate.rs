//! The rules that relate a key to other keys or to the file system, checked
//! once every field has been read: the Redis TLS files, the two listeners,
//! and the log filter (which only warns).

use std::path::PathBuf;

use super::log_level::log_filter;
use super::{key_error, Config, ConfigError, RedisSettings, RedisTarget};

/// Checks `config` and settles `log_level` to a filter tracing accepts;
/// what the operator should hear about but need not fix goes to `warnings`.
pub(super) fn validate(config: &mut Config, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let (filter, warning) = log_filter(&config.log_level);
    config.log_level = filter;
    warnings.extend(warning);
    let target = match &config.redis_url {
        Some(url) => Some(RedisTarget::parse(url.expose()).map_err(|e| key_error("redis_url", e))?),
        None => None,
    };
    let tls_url = target.as_ref().is_some_and(RedisTarget::tls);
    check_tls_files(&config.redis, tls_url)?;
    let sentinel = matches!(target, Some(RedisTarget::Sentinel { .. }));
    for (key, set) in [
        (
            "redis.sentinel_username",
            !config.redis.sentinel_username.is_empty(),
        ),
        (
            "redis.sentinel_password",
            !config.redis.sentinel_password.expose().is_empty(),
        ),
    ] {
        if set && !sentinel {
            return Err(key_error(
                key,
                "is set, but redis_url is not a redis+sentinel:// (or rediss+sentinel://) URL",
            ));
        }
    }
    let roster = &config.roster;
    if roster.alive_window < roster.heartbeat * 2 {
        return Err(key_error(
            "roster.alive_window",
            "must be at least twice roster.heartbeat, or live nodes would flicker dead",
        ));
    }
    if roster.prune_after < roster.alive_window {
        return Err(key_error(
            "roster.prune_after",
            "must not be shorter than roster.alive_window",
        ));
    }
    if config.ws_port == config.internal_port
        && config.ws_port != 0
        && binds_overlap(&config.ws_bind, &config.internal_bind)
    {
        return Err(key_error(
            "internal_port",
            format!(
                "{} is also ws_port: the public and the internal listener need ports of their \
                 own (the Go defaults are 9000 and 9001)",
                config.internal_port
            ),
        ));
    }
    Ok(())
}

/// The files exist, belong to a `rediss://` URL, and a client certificate
/// comes with its key.
fn check_tls_files(redis: &RedisSettings, tls_url: bool) -> Result<(), ConfigError> {
    let files: [(&str, &Option<PathBuf>); 3] = [
        ("redis.tls_ca_file", &redis.tls_ca_file),
        ("redis.tls_cert_file", &redis.tls_cert_file),
        ("redis.tls_key_file", &redis.tls_key_file),
    ];
    for (key, file) in files {
        if let Some(file) = file {
            std::fs::metadata(file).map_err(|error| {
                key_error(
                    key,
                    format!("cannot read {:?}: {error}", file.display().to_string()),
                )
            })?;
        }
    }
    for (key, file) in files {
        if file.is_some() && !tls_url {
            return Err(key_error(
                key,
                "is set, but redis_url is not a TLS URL (rediss://, rediss+sentinel:// or \
                 rediss+cluster://)",
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
