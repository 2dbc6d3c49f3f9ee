//! Counters for `GET /metrics` (Prometheus text format), bumped where things
//! happen; the gauges come from a [`Snapshot`] the node takes at scrape
//! time (`render.rs`). Only aggregates: no topic names or user ids ever
//! become labels.

mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use self::render::{ClusterSnapshot, Snapshot};

/// Why a socket was refused or closed during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotRegistered,
    Limit,
    AuthRequired,
    Unauthorized,
    AuthTimeout,
}

const REFUSALS: [(Refusal, &str); 6] = [
    (Refusal::BadRequest, "bad_request"),
    (Refusal::NotRegistered, "not_registered"),
    (Refusal::Limit, "limit"),
    (Refusal::AuthRequired, "auth_required"),
    (Refusal::Unauthorized, "unauthorized"),
    (Refusal::AuthTimeout, "auth_timeout"),
];

/// Upper bounds (seconds) of the publish-handling histogram, smallest first.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
pub struct Metrics {
    pub upgrades: AtomicU64,
    pub authenticated: AtomicU64,
    refusals: [AtomicU64; 6],
    pub publishes: AtomicU64,
    pub publishes_not_registered: AtomicU64,
    pub deliveries: AtomicU64,
    /// Deliveries the fan-out wrote into the socket itself (no session woken).
    pub written_through: AtomicU64,
    pub dropped_frames: AtomicU64,
    /// Frames dropped from socket queues for waiting longer than
    /// `limits.max_frame_age` (reported in `lagged` as `dropped_frames` are).
    pub stale_frames: AtomicU64,
    pub lagged_notices: AtomicU64,
    pub write_timeouts: AtomicU64,
    /// Sockets closed (1013) for taking nothing while their queue overflowed.
    pub stalled_closes: AtomicU64,
    /// Sockets closed at shutdown before they took everything queued.
    pub shutdown_unflushed: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub oversize_messages: AtomicU64,
    pub api_requests: AtomicU64,
    latency_buckets: [AtomicU64; 12],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
}

/// Counter values read at one moment, for the dashboard, which shows rates
/// and the latency histogram; `/metrics` renders the same atomics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub publishes: u64,
    pub deliveries: u64,
    pub dropped_frames: u64,
    pub lagged_notices: u64,
    /// `(reason label, count)`, the labels of `skywave_refusals_total`.
    pub refusals: [(&'static str, u64); 6],
    /// Cumulative, as Prometheus: publishes handled within each bound of
    /// [`LATENCY_BUCKETS`].
    pub latency_buckets: [u64; 12],
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

impl Metrics {
    pub fn counters(&self) -> Counters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            publishes: load(&self.publishes),
            deliveries: load(&self.deliveries),
            dropped_frames: load(&self.dropped_frames),
            lagged_notices: load(&self.lagged_notices),
            refusals: std::array::from_fn(|i| (REFUSALS[i].1, load(&self.refusals[i]))),
            latency_buckets: std::array::from_fn(|i| load(&self.latency_buckets[i])),
            latency_count: load(&self.latency_count),
            latency_sum_seconds: load(&self.latency_sum_nanos) as f64 / 1e9,
        }
    }

    pub fn refused(&self, refusal: Refusal) {
        if let Some(index) = REFUSALS.iter().position(|(r, _)| *r == refusal) {
            self.refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn observe_publish(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_what_was_counted() {
        let metrics = Metrics::default();
        metrics.publishes.fetch_add(3, Ordering::Relaxed);
        metrics.refused(Refusal::Unauthorized);
        metrics.observe_publish(Duration::from_micros(300));
        let counters = metrics.counters();
        assert_eq!(counters.publishes, 3);
        assert_eq!(counters.refusals[4], ("unauthorized", 1));
        assert_eq!(counters.latency_buckets[..3], [0, 0, 1]);
        assert_eq!(counters.latency_buckets[11], 1);
        assert_eq!(counters.latency_count, 1);
        assert!((counters.latency_sum_seconds - 0.0003).abs() < 1e-9);
    }
}
