//! The keys derived from `schema.rs`: the example file documents exactly
//! them, each has its `SKYWAVE_*` variable that reaches its field, and
//! `check-config` shows each once.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::*;

#[test]
fn keys_are_the_leaves_of_the_sections() {
    let keys = keys();
    for key in [
        "ws_port",
        "worker_secret",
        "redis.command_timeout",
        "limits.trusted_proxies",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
    for section in ["redis", "limits"] {
        assert!(!keys.iter().any(|k| k == section), "{section} is a section");
    }
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
}

#[test]
fn the_example_file_documents_exactly_the_known_keys() {
    let example: yaml_serde::Value = yaml_serde::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config.example.yaml"
    )))
    .expect("config.example.yaml is YAML");
    let documented: BTreeSet<String> = show::leaves(&example)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let known: BTreeSet<String> = keys().iter().cloned().collect();
    let undocumented: Vec<&String> = known.difference(&documented).collect();
    let invented: Vec<&String> = documented.difference(&known).collect();
    assert!(
        undocumented.is_empty() && invented.is_empty(),
        "config.example.yaml lacks {undocumented:?} and names unknown keys {invented:?}"
    );
}

#[test]
fn every_key_is_looked_up_in_the_environment() {
    let asked = RefCell::new(BTreeSet::new());
    let env = |name: &str| {
        asked.borrow_mut().insert(name.to_string());
        None
    };
    Config::load(None, &env, true).expect("defaults, with a generated secret");
    let expected: BTreeSet<String> = keys().iter().map(|key| env_name(key)).collect();
    assert_eq!(asked.into_inner(), expected);
    assert!(expected.contains("SKYWAVE_REDIS_COMMAND_TIMEOUT"));
    assert!(expected.contains("SKYWAVE_LIMITS_TRUSTED_PROXIES"));
}

/// A value no key takes as it is, set through each key's variable in turn:
/// either that key is named in the refusal, or the value arrived (shown, or
/// warned about).
#[test]
fn every_variable_reaches_its_own_key() {
    const ODD: &str = "!odd value";
    for key in keys() {
        let name = env_name(key);
        let env = |asked: &str| {
            if asked == name {
                Some(ODD.to_string())
            } else if asked == "SKYWAVE_WORKER_SECRET" {
                Some(SECRET.to_string())
            } else {
                None
            }
        };
        match Config::load(None, &env, false) {
            Err(ConfigError::Key { key: named, .. }) => assert_eq!(&named, key, "{name}"),
            Err(other) => panic!("{name}: {other}"),
            Ok(loaded) => {
                let shown = format!("{key}: {ODD}");
                let warned = loaded
                    .warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{key}`")));
                assert!(
                    loaded.config.describe().lines().any(|l| l == shown) || warned,
                    "{name} did not reach {key}: {}",
                    loaded.config.describe()
                );
            }
        }
    }
}

#[test]
fn check_config_shows_every_key_once_without_secrets() {
    let text = format!(
        "worker_secret: {SECRET}\nredis_url: redis://user:pa55word@h:6379/0\n\
         limits:\n  trusted_proxies: [10.0.0.1, \"::1\"]\n"
    );
    let shown = load(&text).expect("loads").config.describe();
    let shown_keys: Vec<&str> = shown
        .lines()
        .map(|line| line.split_once(": ").map_or(line, |(key, _)| key))
        .collect();
    let keys: Vec<&str> = keys().iter().map(String::as_str).collect();
    assert_eq!(shown_keys, keys);
    assert!(
        !shown.contains(SECRET) && !shown.contains("pa55word"),
        "{shown}"
    );
    for line in [
        "worker_secret: (32 characters)",
        "redis_url: redis://user:***@h:6379/0",
        "topic_ttl: 24h0m0s",
        "ws_bind: (all interfaces)",
        "log_format: text",
        "redis.tls_ca_file: (system roots)",
        "limits.trusted_proxies: [10.0.0.1, ::1]",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in:\n{shown}");
    }
}

#[test]
fn only_sections_nest_and_keys_are_never_positions() {
    // `0:` must not be read as the first field, whatever serde would do.
    let text =
        format!("worker_secret: {SECRET}\n0: \"10.9.9.9\"\n1: 7000\nlimits: 5\nredis:\n  7: x\n");
    let loaded = load(&text).expect("loads");
    assert_eq!(loaded.config.ws_bind, "");
    assert_eq!(loaded.config.ws_port, 9000);
    let mut named: Vec<&str> = loaded
        .warnings
        .iter()
        .filter_map(|w| w.split('`').nth(1))
        .collect();
    named.sort_unstable();
    // A section that is not a mapping is an unknown key, like any value
    // skywave cannot place.
    assert_eq!(
        named,
        ["0", "1", "limits", "redis.7"],
        "{:?}",
        loaded.warnings
    );
    // An empty section is its defaults, not a mistake.
    let empty = load(&format!("worker_secret: {SECRET}\nredis:\nlimits:\n")).expect("loads");
    assert!(empty.warnings.is_empty(), "{:?}", empty.warnings);
}
