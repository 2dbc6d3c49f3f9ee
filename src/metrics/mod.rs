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

/// Upper bounds (seconds) of the publish-handling histogram.
const LATENCY_BUCKETS: [f64; 12] = [
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
    pub dropped_frames: AtomicU64,
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

impl Metrics {
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
