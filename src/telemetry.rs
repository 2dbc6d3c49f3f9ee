//! Logging setup: `tracing` to stderr, as text or JSON lines. `RUST_LOG`
//! overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A warning that may repeat at a high rate (one per request while Redis
/// refuses writes): logged at once, then at most once per `every`, with the
/// number of occurrences in between.
pub struct Throttled {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttled {
    pub const fn new(every: std::time::Duration) -> Self {
        Throttled {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Calls `log(repeats)` if it is time to log, where `repeats` counts the
    /// occurrences not logged since the last line.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let due = state
            .0
            .is_none_or(|at| now.duration_since(at) >= self.every);
        if due {
            let repeats = state.1;
            *state = (Some(now), 0);
            drop(state);
            log(repeats);
        } else {
            state.1 += 1;
        }
    }
}
