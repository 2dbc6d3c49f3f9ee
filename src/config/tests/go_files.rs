//! Config files as operators of the Go `wavelog_worker` write them (its
//! sample's layout: comment blocks, commented-out keys, quoted values, an
//! empty `redis_url`), which must load as the same settings written plainly.

use super::*;

const GO_SECRET: &str = "3f9a1c0b7e6d5a4f3e2d1c0b9a8f7e6d5c4b3a29181716151413121110090807";

fn go_file() -> String {
    format!(
        "# Wavelog worker — config.yaml\n\
         ws_port: 9000\n\
         internal_port: \"9001\"\n\
         \n\
         # Optional: bind addresses.\n\
         # ws_bind: empty/omitted = all interfaces (0.0.0.0 + ::).\n\
         # In Docker, internal_bind must be \"0.0.0.0\" so Wavelog reaches the API.\n\
         ws_bind:\n\
         internal_bind: \"0.0.0.0\"\n\
         \n\
         # Shared secret — must match worker_secret in Wavelog's worker.php.\n\
         worker_secret: \"{GO_SECRET}\"   # openssl rand -hex 32\n\
         \n\
         # Omit or leave empty for single-instance mode.\n\
         redis_url: \"\"\n\
         # redis_url: \"redis://localhost:6379/2\"  # /0-15 selects the DB\n\
         \n\
         # Go duration format (e.g. \"24h\", \"12h\", \"90m\").\n\
         topic_ttl: '24h'\n\
         \n\
         # Keys of some other Go version: ignored with a warning.\n\
         metrics_port: 9002\n\
         allowed_origins:\n  - https://log.example.org\n"
    )
}

#[test]
fn a_go_worker_file_loads_as_the_same_settings_written_plainly() {
    let loaded = load(&go_file()).expect("a Go worker file loads");
    let plain = load(&format!(
        "worker_secret: {GO_SECRET}\ninternal_bind: 0.0.0.0\n"
    ))
    .expect("loads");
    assert_eq!(loaded.config.describe(), plain.config.describe());
    let c = &loaded.config;
    assert_eq!((c.ws_port, c.internal_port), (9000, 9001));
    assert_eq!(
        (c.ws_bind.as_str(), c.internal_bind.as_str()),
        ("", "0.0.0.0")
    );
    assert_eq!(
        c.worker_secret.expose(),
        GO_SECRET,
        "the trailing comment is not part of it"
    );
    assert!(c.redis_url.is_none());
    assert_eq!(c.topic_ttl, Duration::from_secs(86_400));
    assert_eq!(
        loaded.warnings,
        [
            "unknown config key `allowed_origins` ignored",
            "unknown config key `metrics_port` ignored",
        ]
    );
}

#[test]
fn windows_line_endings_and_no_final_newline_load_the_same() {
    let unix = load(&go_file()).expect("loads");
    let windows = go_file().replace('\n', "\r\n");
    let windows = load(windows.trim_end()).expect("CRLF loads");
    assert_eq!(windows.config.describe(), unix.config.describe());
    assert_eq!(windows.warnings, unix.warnings);
}

#[test]
fn a_go_redis_url_with_an_inline_comment() {
    let text = format!(
        "worker_secret: \"{GO_SECRET}\"\nredis_url: redis://localhost:6379/2  # a dedicated DB\n"
    );
    let url = load(&text).expect("loads").config.redis_url.expect("set");
    assert_eq!(url.expose(), "redis://localhost:6379/2");
}

#[test]
fn files_without_settings_are_the_defaults() {
    for text in ["", "# only comments\n", "---\n", "\n\n"] {
        assert_eq!(key_of(load(text)), "worker_secret", "{text:?}");
    }
}
