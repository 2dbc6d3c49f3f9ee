//! The rules that relate a key to other keys or to the file system, checked
//! once every field has been read: the Redis TLS files, the two listeners,
//! and the log filter (which only warns).

use std::path::PathBuf;

use super::log_level::log_filter;
use super::{
    key_error, Config, ConfigError, NatsAuth, NatsSettings, NatsTarget, RedisSettings, RedisTarget,
};

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
    check_nats(config)?;
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
    files_exist(&files)?;
    for (key, file) in files {
        if file.is_some() && !tls_url {
            return Err(key_error(
                key,
                "is set, but redis_url is not a TLS URL (rediss://, rediss+sentinel:// or \
                 rediss+cluster://)",
            ));
        }
    }
    certificate_with_key("redis", &redis.tls_cert_file, &redis.tls_key_file)
}

/// `nats_url` alone (not with `redis_url`), and the `nats:` keys that need
/// it: credentials of one kind, files that exist, a certificate with its key.
fn check_nats(config: &Config) -> Result<(), ConfigError> {
    let nats = &config.nats;
    let defaults = NatsSettings::default();
    let Some(url) = &config.nats_url else {
        let set = [
            ("nats.token", !nats.token.expose().is_empty()),
            ("nats.creds_file", nats.creds_file.is_some()),
            ("nats.nkey_seed_file", nats.nkey_seed_file.is_some()),
            ("nats.tls_ca_file", nats.tls_ca_file.is_some()),
            ("nats.tls_cert_file", nats.tls_cert_file.is_some()),
            ("nats.tls_key_file", nats.tls_key_file.is_some()),
            ("nats.kv_replicas", nats.kv_replicas != defaults.kv_replicas),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(key_error(key, "is set, but nats_url is not"));
        }
        return Ok(());
    };
    if config.redis_url.is_some() {
        return Err(key_error(
            "nats_url",
            "is set together with redis_url: a node uses one broker, Redis or NATS; \
             remove one of the two",
        ));
    }
    let target = NatsTarget::parse(url.expose()).map_err(|e| key_error("nats_url", e))?;
    let mut kinds = Vec::new();
    if target.auth != NatsAuth::None {
        kinds.push("credentials in nats_url");
    }
    if !nats.token.expose().is_empty() {
        kinds.push("nats.token");
    }
    if nats.creds_file.is_some() {
        kinds.push("nats.creds_file");
    }
    if nats.nkey_seed_file.is_some() {
        kinds.push("nats.nkey_seed_file");
    }
    if let [first, second, ..] = kinds[..] {
        let key = if second.starts_with("nats.") {
            second
        } else {
            first
        };
        return Err(key_error(
            key,
            format!("{first} and {second} are both given: use one way to authenticate"),
        ));
    }
    let files: [(&str, &Option<PathBuf>); 5] = [
        ("nats.creds_file", &nats.creds_file),
        ("nats.nkey_seed_file", &nats.nkey_seed_file),
        ("nats.tls_ca_file", &nats.tls_ca_file),
        ("nats.tls_cert_file", &nats.tls_cert_file),
        ("nats.tls_key_file", &nats.tls_key_file),
    ];
    files_exist(&files)?;
    certificate_with_key("nats", &nats.tls_cert_file, &nats.tls_key_file)
}

/// Every file given can be read.
fn files_exist(files: &[(&str, &Option<PathBuf>)]) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `<section>.tls_cert_file` and `<section>.tls_key_file` come together.
fn certificate_with_key(
    section: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    match (cert, key) {
        (Some(_), None) => Err(key_error(
            &format!("{section}.tls_key_file"),
            format!("missing: {section}.tls_cert_file needs its private key"),
        )),
        (None, Some(_)) => Err(key_error(
            &format!("{section}.tls_cert_file"),
            format!("missing: {section}.tls_key_file needs its certificate"),
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
