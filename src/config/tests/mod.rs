//! The loader's rules, each through `Config::from_yaml` or `Config::load`
//! as the service calls them; `schema.rs`'s derived keys in `keys.rs`, real
//! Go worker files in `go_files.rs`.

mod go_files;
mod keys;
mod nats;

use std::path::Path;
use std::time::Duration;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_yaml(text)
}

fn key_of(result: Result<Loaded, ConfigError>) -> String {
    match result {
        Err(ConfigError::Key { key, .. }) => key,
        Err(other) => panic!("expected a key error, got {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn go_defaults() {
    let loaded = load(&format!("worker_secret: {SECRET}\n")).expect("loads");
    let c = loaded.config;
    assert_eq!((c.ws_port, c.internal_port), (9000, 9001));
    assert_eq!(c.ws_bind, "");
    assert_eq!(c.internal_bind, "127.0.0.1");
    assert_eq!(c.topic_ttl, Duration::from_secs(86_400));
    assert!(c.redis_url.is_none());
    assert!(loaded.warnings.is_empty());
    assert!(!loaded.generated_secret);
}

#[test]
fn go_style_file_with_quotes_and_comments() {
    let text = format!(
        "# Wavelog — worker\nws_port: \"9100\"\ninternal_port: 9101\nws_bind: \"127.0.0.1\"\n\
         worker_secret: \"{SECRET}\"\nredis_url: \"\"\ntopic_ttl: 1h30m\n"
    );
    let c = load(&text).expect("loads").config;
    assert_eq!((c.ws_port, c.internal_port), (9100, 9101));
    assert_eq!(c.topic_ttl, Duration::from_secs(5400));
    assert!(c.redis_url.is_none());
}

#[test]
fn secret_rules_name_the_key() {
    assert_eq!(key_of(load("ws_port: 9000\n")), "worker_secret");
    assert_eq!(key_of(load("worker_secret: \"\"\n")), "worker_secret");
    assert_eq!(
        key_of(load(&format!("worker_secret: {}\n", &SECRET[..31]))),
        "worker_secret"
    );
}

#[test]
fn bad_ttl_values_name_the_key() {
    for ttl in ["banana", "0s", "-5m", "10", "0", "\"\""] {
        let text = format!("worker_secret: {SECRET}\ntopic_ttl: {ttl}\n");
        assert_eq!(key_of(load(&text)), "topic_ttl", "topic_ttl {ttl}");
    }
}

#[test]
fn bad_values_name_their_keys() {
    let cases = [
        ("ws_port: 70000", "ws_port"),
        ("internal_port: abc", "internal_port"),
        ("redis_url: \"http://localhost\"", "redis_url"),
        ("redis_url: \"redis://\"", "redis_url"),
        ("ws_bind: \"not an address\"", "ws_bind"),
        ("log_format: xml", "log_format"),
        ("redis:\n  command_timeout: fast", "redis.command_timeout"),
        (
            "limits:\n  trusted_proxies: [\"10.0.0.1\", \"nope\"]",
            "limits.trusted_proxies",
        ),
    ];
    for (line, key) in cases {
        let text = format!("worker_secret: {SECRET}\n{line}\n");
        assert_eq!(key_of(load(&text)), key, "{line}");
    }
}

#[test]
fn unknown_keys_warn_with_a_suggestion() {
    let text = format!("worker_secret: {SECRET}\nredis_ulr: redis://x\nsome_future_option: 1\n");
    let loaded = load(&text).expect("unknown keys are not fatal");
    assert_eq!(loaded.warnings.len(), 2);
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.contains("`redis_ulr`") && w.contains("`redis_url`")));
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.contains("`some_future_option`")));
}

#[test]
fn redis_section_and_url_forms() {
    let text = format!(
        "worker_secret: {SECRET}\nredis_url: rediss://user:pa55@redis.example:6380/3\n\
         redis:\n  key_prefix: \"app:\"\n  command_timeout: 250ms\n"
    );
    let c = load(&text).expect("loads").config;
    assert_eq!(c.redis.key_prefix, "app:");
    assert_eq!(c.redis.command_timeout, Duration::from_millis(250));
    let url = c.redis_url.expect("set");
    assert_eq!(
        redact_url(url.expose()),
        "rediss://user:***@redis.example:6380/3"
    );
    assert!(!format!("{url:?}").contains("pa55"));
}

#[test]
fn env_overrides_every_key() {
    let dir = std::env::temp_dir().join(format!("skywave-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("c.yaml");
    std::fs::write(&path, format!("worker_secret: {SECRET}\nws_port: 9000\n")).expect("write");
    let env = |name: &str| match name {
        "SKYWAVE_WS_PORT" => Some("9300".to_string()),
        "SKYWAVE_WORKER_SECRET" => Some("f".repeat(40)),
        "SKYWAVE_REDIS_KEY_PREFIX" => Some("x:".to_string()),
        "SKYWAVE_LIMITS_SOCKET_QUEUE" => Some("7".to_string()),
        _ => None,
    };
    let c = Config::load(Some(&path), &env, false)
        .expect("loads")
        .config;
    assert_eq!(c.ws_port, 9300);
    assert_eq!(c.worker_secret.expose(), "f".repeat(40));
    assert_eq!(c.redis.key_prefix, "x:");
    assert_eq!(c.limits.socket_queue, 7);
    for key in keys() {
        assert!(env_name(key).starts_with("SKYWAVE_"));
    }
    assert_eq!(
        env_name("redis.command_timeout"),
        "SKYWAVE_REDIS_COMMAND_TIMEOUT"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_secret_is_generated_only_when_allowed() {
    let loaded = Config::load(None, &|_| None, true).expect("defaults");
    assert!(loaded.generated_secret);
    assert_eq!(loaded.config.worker_secret.expose().len(), 64);
    let refused = Config::load(None, &|_| None, false).expect_err("no secret, none generated");
    let text = refused.to_string();
    assert!(
        text.contains("worker_secret") && text.contains("SKYWAVE_WORKER_SECRET"),
        "{text}"
    );
    // A configured secret always wins over generating one.
    let env = |name: &str| (name == "SKYWAVE_WORKER_SECRET").then(|| SECRET.to_string());
    let loaded = Config::load(None, &env, true).expect("env secret");
    assert!(!loaded.generated_secret);
    assert_eq!(loaded.config.worker_secret.expose(), SECRET);
}

#[test]
fn the_example_placeholder_is_not_a_secret() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"))
            .expect("config.example.yaml");
    assert_eq!(key_of(Config::from_yaml(&example)), "worker_secret");
    assert_eq!(
        key_of(load(
            "worker_secret: \"CHANGE-ME-0123456789abcdef0123456789\"\n"
        )),
        "worker_secret"
    );
}

#[test]
fn listeners_on_one_port_are_refused() {
    let same = format!("worker_secret: {SECRET}\nws_port: 9100\ninternal_port: 9100\n");
    assert_eq!(key_of(load(&same)), "internal_port");
    // Two different addresses may share a port number; port 0 is always free.
    let split = format!(
        "worker_secret: {SECRET}\nws_port: 9100\ninternal_port: 9100\n\
         ws_bind: 10.1.2.3\ninternal_bind: 127.0.0.1\n"
    );
    assert!(load(&split).is_ok());
    let zero = format!("worker_secret: {SECRET}\nws_port: 0\ninternal_port: 0\n");
    assert!(load(&zero).is_ok());
}

#[test]
fn log_level_typos_warn_and_keep_logging() {
    for (given, filter) in [
        ("warning", "warn"),
        ("verbose", "debug"),
        ("INFO", "info"),
        ("info,skywave=debug", "info,skywave=debug"),
        ("skywave=warning", "skywave=warn"),
    ] {
        let loaded = load(&format!(
            "worker_secret: {SECRET}\nlog_level: \"{given}\"\n"
        ))
        .expect("loads");
        assert_eq!(loaded.config.log_level, filter, "log_level {given}");
        assert!(loaded.warnings.is_empty(), "{given}: {:?}", loaded.warnings);
    }
    for given in ["loud", "info,skywave=chatty", "=debug"] {
        let loaded = load(&format!(
            "worker_secret: {SECRET}\nlog_level: \"{given}\"\n"
        ))
        .expect("loads");
        assert_eq!(loaded.config.log_level, "info", "log_level {given}");
        assert!(
            loaded.warnings.iter().any(|w| w.contains("`log_level`")),
            "{given}: {:?}",
            loaded.warnings
        );
    }
}

#[test]
fn unix_socket_urls_as_go_redis_writes_them() {
    for url in [
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=3",
        "redis+unix:///run/redis.sock?db=2",
        "unix://user:pw@/run/redis.sock?db=1",
    ] {
        let text = format!("worker_secret: {SECRET}\nredis_url: \"{url}\"\n");
        assert!(load(&text).is_ok(), "{url} loads");
    }
    assert_eq!(
        normalize_redis_url("unix://user:pw@/run/redis.sock?db=1"),
        "unix:///run/redis.sock?db=1&user=user&pass=pw"
    );
    assert_eq!(
        normalize_redis_url("unix://:pw@/run/redis.sock"),
        "unix:///run/redis.sock?pass=pw"
    );
    assert_eq!(
        normalize_redis_url("redis://u:p@host:6379/0"),
        "redis://u:p@host:6379/0"
    );
    let text = format!("worker_secret: {SECRET}\nredis_url: \"http://x\"\n");
    assert_eq!(key_of(load(&text)), "redis_url");
}

#[test]
fn tls_files_need_a_tls_url_and_each_other() {
    let dir = std::env::temp_dir().join(format!("skywave-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("ca.pem");
    std::fs::write(&file, "not checked here").expect("write");
    let file = file.display();
    let plain = format!(
        "worker_secret: {SECRET}\nredis_url: redis://h:6379/0\nredis:\n  tls_ca_file: {file}\n"
    );
    assert_eq!(key_of(load(&plain)), "redis.tls_ca_file");
    let tls = format!(
        "worker_secret: {SECRET}\nredis_url: rediss://h:6380/0\nredis:\n  tls_ca_file: {file}\n"
    );
    let c = load(&tls).expect("loads").config;
    assert_eq!(
        c.redis.tls_ca_file.as_deref(),
        Some(dir.join("ca.pem").as_path())
    );
    let half = format!(
        "worker_secret: {SECRET}\nredis_url: rediss://h:6380/0\nredis:\n  tls_cert_file: {file}\n"
    );
    assert_eq!(key_of(load(&half)), "redis.tls_key_file");
    let missing = format!(
        "worker_secret: {SECRET}\nredis_url: rediss://h:6380/0\nredis:\n  tls_ca_file: /nonexistent/ca.pem\n"
    );
    assert_eq!(key_of(load(&missing)), "redis.tls_ca_file");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = Config::load(
        Some(Path::new("/nonexistent/skywave.yaml")),
        &|_| None,
        false,
    )
    .expect_err("must fail");
    assert!(err.to_string().contains("/nonexistent/skywave.yaml"));
}

#[test]
fn sentinel_and_cluster_url_forms() {
    let target =
        RedisTarget::parse("redis+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/mymaster/2")
            .expect("sentinel URL");
    assert_eq!(
        target,
        RedisTarget::Sentinel {
            sentinels: vec![
                ("s1".to_string(), 26379),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 26380)
            ],
            master: "mymaster".to_string(),
            db: 2,
            auth: Credentials {
                username: Some("app".to_string()),
                password: Some("p@ss".to_string()),
            },
            tls: false,
        }
    );
    assert!(RedisTarget::parse("rediss+sentinel://s1/m")
        .expect("TLS sentinel URL")
        .tls());
    let cluster = RedisTarget::parse("rediss+cluster://:secret@r1,r2:7001").expect("cluster URL");
    assert_eq!(
        cluster,
        RedisTarget::Cluster {
            seeds: vec![("r1".to_string(), 6379), ("r2".to_string(), 7001)],
            auth: Credentials {
                username: None,
                password: Some("secret".to_string()),
            },
            tls: true,
        }
    );
    for (bad, says) in [
        ("redis+sentinel://s1:26379", "master's name"),
        ("redis+sentinel://s1/m/x", "not a number"),
        ("redis+cluster://r1/3", "database 0 only"),
        ("redis+cluster:///", "names no host"),
        ("redis+cluster://r1:99999", "bad port"),
        ("memcached://h", "not a Redis URL"),
    ] {
        let error = RedisTarget::parse(bad).expect_err(bad);
        assert!(error.contains(says), "{bad}: {error}");
    }
    // Through the loader: the key is named, the password never shown.
    let text = format!("worker_secret: {SECRET}\nredis_url: redis+sentinel://u:hunter2@s1/\n");
    match load(&text) {
        Err(ConfigError::Key { key, message }) => {
            assert_eq!(key, "redis_url");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected a redis_url error, got {other:?}"),
    }
}

#[test]
fn sentinel_and_cluster_keys_belong_to_their_urls() {
    let plain = format!(
        "worker_secret: {SECRET}\nredis_url: redis://h:6379/0\nredis:\n  sentinel_password: x\n"
    );
    assert_eq!(key_of(load(&plain)), "redis.sentinel_password");
    let sentinel = format!(
        "worker_secret: {SECRET}\nredis_url: redis+sentinel://s1,s2/m\nredis:\n  \
         sentinel_username: watcher\n  sentinel_password: x\n"
    );
    let c = load(&sentinel).expect("loads").config;
    assert_eq!(c.redis.sentinel_username, "watcher");
    let cluster = format!(
        "worker_secret: {SECRET}\nredis_url: redis+cluster://r1\nredis:\n  \
         cluster_shards: 64\n  cluster_pubsub: classic\n"
    );
    let c = load(&cluster).expect("loads").config;
    assert_eq!(c.redis.cluster_shards, 64);
    assert_eq!(c.redis.cluster_pubsub, ClusterPubsub::Classic);
    let bad = format!("worker_secret: {SECRET}\nredis:\n  cluster_pubsub: fast\n");
    assert_eq!(key_of(load(&bad)), "redis.cluster_pubsub");
    let bad = format!("worker_secret: {SECRET}\nredis:\n  cluster_shards: 0\n");
    assert_eq!(key_of(load(&bad)), "redis.cluster_shards");
}
