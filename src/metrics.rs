//! Counters and gauges for `GET /metrics` (Prometheus text format). Only
//! aggregates: no topic names or user ids ever become labels.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::node::Node;

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

    /// The whole exposition, with the gauges read from the node now.
    pub async fn render(&self, node: &Node) -> String {
        let counts = node.hub.counts();
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "skywave_sockets",
            "WebSockets on this node that passed auth",
            counts.connected_sockets as u64,
        );
        gauge(
            &mut out,
            "skywave_clients",
            "distinct users on this node (anonymous sockets count one each)",
            counts.connected_clients as u64,
        );
        gauge(
            &mut out,
            "skywave_active_topics",
            "topics with at least one socket on this node",
            counts.active_topics as u64,
        );
        gauge(
            &mut out,
            "skywave_registered_topics",
            "registered topics (cluster-wide in cluster mode)",
            node.registry.count().await as u64,
        );
        gauge(
            &mut out,
            "skywave_uptime_seconds",
            "seconds since start",
            node.uptime_seconds(),
        );
        counter(
            &mut out,
            "skywave_upgrades_total",
            "WebSocket upgrades accepted",
            load(&self.upgrades),
        );
        counter(
            &mut out,
            "skywave_auth_ok_total",
            "sockets that passed auth",
            load(&self.authenticated),
        );
        header(
            &mut out,
            "skywave_refusals_total",
            "counter",
            "sockets refused, by reason",
        );
        for ((_, label), value) in REFUSALS.iter().zip(&self.refusals) {
            let _ = writeln!(
                out,
                "skywave_refusals_total{{reason=\"{label}\"}} {}",
                load(value)
            );
        }
        counter(
            &mut out,
            "skywave_publishes_total",
            "publishes accepted (HTTP)",
            load(&self.publishes),
        );
        counter(
            &mut out,
            "skywave_publishes_not_registered_total",
            "publishes answered 404",
            load(&self.publishes_not_registered),
        );
        counter(
            &mut out,
            "skywave_deliveries_total",
            "frames queued to sockets",
            load(&self.deliveries),
        );
        counter(
            &mut out,
            "skywave_dropped_frames_total",
            "oldest frames dropped from full socket queues",
            load(&self.dropped_frames),
        );
        counter(
            &mut out,
            "skywave_lagged_notices_total",
            "lagged notices sent to slow sockets",
            load(&self.lagged_notices),
        );
        counter(
            &mut out,
            "skywave_write_timeouts_total",
            "sockets dropped because a write did not complete in time",
            load(&self.write_timeouts),
        );
        counter(
            &mut out,
            "skywave_idle_timeouts_total",
            "sockets dropped for silence",
            load(&self.idle_timeouts),
        );
        counter(
            &mut out,
            "skywave_oversize_messages_total",
            "sockets closed for an inbound message over 4 KiB",
            load(&self.oversize_messages),
        );
        counter(
            &mut out,
            "skywave_api_requests_total",
            "internal API requests",
            load(&self.api_requests),
        );

        header(&mut out, "skywave_mode", "gauge", "1 for the current mode");
        let mode = node.mode().as_str();
        for candidate in ["single", "cluster", "degraded"] {
            let _ = writeln!(
                out,
                "skywave_mode{{mode=\"{candidate}\"}} {}",
                u8::from(candidate == mode)
            );
        }
        if let Some(cluster) = &node.cluster {
            let c = &cluster.counters;
            counter(
                &mut out,
                "skywave_redis_joins_total",
                "times this node (re)joined the cluster",
                load(&c.joins),
            );
            counter(
                &mut out,
                "skywave_redis_subscriber_restarts_total",
                "times the subscription was lost and restarted",
                load(&c.subscriber_restarts),
            );
            counter(
                &mut out,
                "skywave_redis_command_failures_total",
                "redis commands that failed for a connection reason",
                cluster.link().failures(),
            );
            counter(
                &mut out,
                "skywave_envelopes_received_total",
                "envelopes received from redis",
                load(&c.envelopes_received),
            );
            counter(
                &mut out,
                "skywave_envelopes_malformed_total",
                "malformed envelopes skipped",
                load(&c.envelopes_malformed),
            );
            counter(
                &mut out,
                "skywave_envelopes_published_total",
                "envelopes published to redis",
                load(&c.envelopes_published),
            );
            counter(
                &mut out,
                "skywave_envelopes_dropped_total",
                "envelopes not published (redis away or queue full)",
                load(&c.envelopes_dropped),
            );
            counter(
                &mut out,
                "skywave_cluster_task_panics_total",
                "cluster tasks (subscriber, publisher, heartbeat) that panicked and were restarted",
                load(&c.task_panics),
            );
        }

        header(
            &mut out,
            "skywave_publish_duration_seconds",
            "histogram",
            "time to handle POST /internal/publish",
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "skywave_publish_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let count = load(&self.latency_count);
        let _ = writeln!(
            out,
            "skywave_publish_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "skywave_publish_duration_seconds_sum {}",
            load(&self.latency_sum_nanos) as f64 / 1e9
        );
        let _ = writeln!(out, "skywave_publish_duration_seconds_count {count}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}
