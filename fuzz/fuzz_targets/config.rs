//! The config loader: any text must load or give an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = skywave::Config::from_yaml(text) {
        assert!(loaded.config.worker_secret.expose().chars().count() >= skywave::config::MIN_SECRET_LEN);
        assert!(!loaded.config.topic_ttl.is_zero());
    }
});
