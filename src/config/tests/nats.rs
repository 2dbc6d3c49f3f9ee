//! `nats_url` and the `nats:` section through the loader.

use super::*;

#[test]
fn nats_url_is_read_and_shown_without_its_password() {
    let text = format!(
        "worker_secret: {SECRET}\nnats_url: nats://app:hunter2@n1:4222,n2:4222\n\
         nats:\n  prefix: fleet-1\n  kv_replicas: 3\n"
    );
    let c = load(&text).expect("loads").config;
    let url = c.nats_url.as_ref().expect("set");
    let target = NatsTarget::parse(url.expose()).expect("parses");
    assert_eq!(target.servers, ["nats://n1:4222", "nats://n2:4222"]);
    assert_eq!(c.nats.prefix, "fleet-1");
    assert_eq!(c.nats.kv_replicas, 3);
    assert!(c.redis_url.is_none());
    let shown = c.describe();
    assert!(
        shown.contains("nats_url: nats://app:***@n1:4222,n2:4222"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn redis_and_nats_together_are_refused_naming_the_key() {
    let text =
        format!("worker_secret: {SECRET}\nredis_url: redis://h:6379/0\nnats_url: nats://n1:4222\n");
    match load(&text) {
        Err(ConfigError::Key { key, message }) => {
            assert_eq!(key, "nats_url");
            assert!(message.contains("redis_url"), "{message}");
        }
        other => panic!("expected a nats_url error, got {other:?}"),
    }
}

#[test]
fn nats_mistakes_name_their_key() {
    let file = std::env::temp_dir().join(format!("skywave-nats-{}.pem", std::process::id()));
    std::fs::write(&file, "x").expect("write");
    let file = file.display();
    for (yaml, key) in [
        ("nats_url: redis://h:6379".to_string(), "nats_url"),
        (
            "nats_url: \"nats://a:b@h1,nats://c:d@h2\"".to_string(),
            "nats_url",
        ),
        ("nats:\n  token: abc".to_string(), "nats.token"),
        (format!("nats:\n  tls_ca_file: {file}"), "nats.tls_ca_file"),
        ("nats:\n  kv_replicas: 3".to_string(), "nats.kv_replicas"),
        (
            "nats_url: nats://h\nnats:\n  kv_replicas: 7".to_string(),
            "nats.kv_replicas",
        ),
        (
            "nats_url: nats://h\nnats:\n  prefix: a.b".to_string(),
            "nats.prefix",
        ),
        (
            "nats_url: nats://h\nnats:\n  prefix: \"\"".to_string(),
            "nats.prefix",
        ),
        (
            "nats_url: nats://u:p@h\nnats:\n  token: abc".to_string(),
            "nats.token",
        ),
        (
            "nats_url: nats://h\nnats:\n  creds_file: /nonexistent/x.creds".to_string(),
            "nats.creds_file",
        ),
        (
            format!("nats_url: tls://h\nnats:\n  tls_cert_file: {file}"),
            "nats.tls_key_file",
        ),
    ] {
        let text = format!("worker_secret: {SECRET}\n{yaml}\n");
        assert_eq!(key_of(load(&text)), key, "{yaml}");
    }
}

#[test]
fn nats_from_the_environment() {
    let env = |name: &str| {
        match name {
            "SKYWAVE_WORKER_SECRET" => Some(SECRET),
            "SKYWAVE_NATS_URL" => Some("tls://tok@n1"),
            "SKYWAVE_NATS_PREFIX" => Some("other"),
            _ => None,
        }
        .map(str::to_string)
    };
    let loaded = Config::load(None, &env, false);
    let c = loaded.expect("loads").config;
    let target = NatsTarget::parse(c.nats_url.expect("set").expose()).expect("parses");
    assert_eq!(target.auth, NatsAuth::Token(Secret::new("tok")));
    assert!(target.tls);
    assert_eq!(c.nats.prefix, "other");
}
