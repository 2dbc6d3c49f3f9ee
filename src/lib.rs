//! skywave: a WebSocket event fan-out worker, drop-in replacement for the Go
//! `wavelog_worker`.
//!
//! Data flow: the publisher POSTs to the internal API (`http`), which asks the
//! `registry` whether the topic exists, encodes the push frame once (`ws::push_frame`)
//! and hands it to the `dispatch` task, which queues it into every subscribed
//! socket's outbox in the `hub`; each socket's `ws` session writes its outbox.
//! In cluster mode the same publish also goes out as an envelope on Redis
//! (`cluster`), whose subscriber feeds remote envelopes into the same
//! dispatcher. `auth` verifies tokens, `config` loads settings, `node` holds
//! the shared state, `app` wires listeners and shutdown, `metrics` and
//! `telemetry` observe.

pub mod app;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod descriptors;
pub mod dispatch;
pub mod frames;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod roster;
pub mod telemetry;
pub mod topic;
pub mod ws;

pub use app::App;
pub use config::Config;

/// The crate version, plus the git commit when built from a checkout
/// (`0.1.0+abc1234ef`).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| match option_env!("SKYWAVE_GIT_COMMIT") {
        Some(commit) => format!("{}+{commit}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_string(),
    })
}
