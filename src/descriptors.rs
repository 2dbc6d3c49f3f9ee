//! File descriptors: every socket is one, and running out of them lets the
//! public port starve the internal API and Redis (accept fails, a publish
//! waits seconds). At start the soft `RLIMIT_NOFILE` is raised to the hard
//! limit, a reserve is kept for the internal listener, Redis and logs, and
//! `limits.max_sockets` (0 = derive it) is capped below what is left, so
//! upgrades are refused with 503 long before `accept` would fail.

use std::sync::OnceLock;

use crate::config::Config;

/// Descriptors kept for everything but WebSockets: the internal API's
/// connections, Redis (pool and subscriber), listeners, logs, files.
pub const RESERVED: u64 = 256;

/// What the process may open, as raised at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before it was raised.
    pub was: u64,
    /// The soft limit now (the hard limit, where raising worked).
    pub now: u64,
}

static LIMIT: OnceLock<FdLimit> = OnceLock::new();

/// Raises the soft limit to the hard one (once per process).
pub fn raise() -> FdLimit {
    *LIMIT.get_or_init(|| {
        let was = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let now = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(was);
        FdLimit { was, now }
    })
}

/// The limit in force, if it was raised in this process.
pub fn limit() -> Option<FdLimit> {
    LIMIT.get().copied()
}

/// The socket cap that leaves the reserve free: the configured one if it
/// fits, else what the limit allows. Returns the cap and, when the
/// configured value had to be lowered, a warning naming the key.
pub fn socket_cap(configured: usize, limit: FdLimit) -> (usize, Option<String>) {
    let room = usize::try_from(limit.now.saturating_sub(RESERVED))
        .unwrap_or(usize::MAX)
        .max(1);
    match configured {
        0 => (room, None),
        wanted if wanted <= room => (wanted, None),
        wanted => (
            room,
            Some(format!(
                "config key `limits.max_sockets`: {wanted} does not fit the file descriptor \
                 limit {} (minus {RESERVED} kept for the internal API and Redis); using {room}",
                limit.now
            )),
        ),
    }
}

/// Raises the limit and fits `limits.max_sockets` to it.
pub fn fit(mut config: Config) -> Config {
    let limit = raise();
    let (cap, warning) = socket_cap(config.limits.max_sockets, limit);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    if limit.now > limit.was {
        tracing::debug!(
            was = limit.was,
            now = limit.now,
            "raised the file descriptor limit"
        );
    }
    config.limits.max_sockets = cap;
    config
}

/// Open descriptors of this process now (Linux; `None` elsewhere).
pub fn open() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve() {
        let limit = FdLimit {
            was: 1024,
            now: 4096,
        };
        assert_eq!(socket_cap(0, limit), (4096 - RESERVED as usize, None));
        assert_eq!(socket_cap(1000, limit), (1000, None));
        let (cap, warning) = socket_cap(10_000, limit);
        assert_eq!(cap, 4096 - RESERVED as usize);
        assert!(warning.is_some_and(|w| w.contains("limits.max_sockets")));
        // A limit below the reserve still admits a socket, never zero (= off).
        assert_eq!(socket_cap(0, FdLimit { was: 64, now: 64 }).0, 1);
    }
}
