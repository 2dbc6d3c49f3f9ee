//! The Prometheus text exposition: the counters of [`Metrics`] plus the
//! gauges of a [`Snapshot`] taken by the node at scrape time (no Redis
//! round trip: the topic count is the one the heartbeat last saw).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Metrics, LATENCY_BUCKETS, REFUSALS};

/// The gauges, and the cluster's counters, as the node sees them now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sockets: u64,
    pub clients: u64,
    pub active_topics: u64,
    pub registered_topics: u64,
    pub uptime_seconds: u64,
    pub mode: &'static str,
    /// The socket cap in force (`limits.max_sockets`, fitted to the fd limit).
    pub max_sockets: u64,
    pub fd_limit: Option<u64>,
    pub open_fds: Option<u64>,
    pub cluster: Option<ClusterSnapshot>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub joins: u64,
    pub subscriber_restarts: u64,
    pub command_failures: u64,
    pub envelopes_received: u64,
    pub envelopes_malformed: u64,
    pub envelopes_published: u64,
    pub envelopes_dropped: u64,
    pub publish_retries: u64,
    pub task_panics: u64,
    pub resyncs: u64,
    pub config_mismatches: u64,
    pub outbox: u64,
    pub registry_pending: u64,
}

impl Metrics {
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "skywave_sockets",
                "WebSockets on this node that passed auth",
                snapshot.sockets,
            ),
            (
                "skywave_clients",
                "distinct users on this node (anonymous sockets count one each)",
                snapshot.clients,
            ),
            (
                "skywave_active_topics",
                "topics with at least one socket on this node",
                snapshot.active_topics,
            ),
            (
                "skywave_registered_topics",
                "registered topics (cluster-wide in cluster mode, as of the last heartbeat)",
                snapshot.registered_topics,
            ),
            (
                "skywave_uptime_seconds",
                "seconds since start",
                snapshot.uptime_seconds,
            ),
            (
                "skywave_max_sockets",
                "sockets this node admits before answering 503 (fitted to the file descriptor limit)",
                snapshot.max_sockets,
            ),
        ] {
            gauge(&mut out, name, help, value);
        }
        if let Some(limit) = snapshot.fd_limit {
            gauge(
                &mut out,
                "skywave_fd_limit",
                "file descriptors this process may open (soft limit, raised to the hard one at start)",
                limit,
            );
        }
        if let Some(open) = snapshot.open_fds {
            gauge(
                &mut out,
                "skywave_open_fds",
                "file descriptors open now",
                open,
            );
        }
        for (name, help, value) in [
            (
                "skywave_upgrades_total",
                "WebSocket upgrades accepted",
                &self.upgrades,
            ),
            (
                "skywave_auth_ok_total",
                "sockets that passed auth",
                &self.authenticated,
            ),
        ] {
            counter(&mut out, name, help, load(value));
        }
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
        for (name, help, value) in [
            (
                "skywave_publishes_total",
                "publishes accepted (HTTP)",
                &self.publishes,
            ),
            (
                "skywave_publishes_not_registered_total",
                "publishes answered 404",
                &self.publishes_not_registered,
            ),
            (
                "skywave_deliveries_total",
                "frames queued to sockets",
                &self.deliveries,
            ),
            (
                "skywave_deliveries_written_through_total",
                "deliveries written into the socket by the fan-out itself (no session woken)",
                &self.written_through,
            ),
            (
                "skywave_dropped_frames_total",
                "oldest frames dropped from full socket queues",
                &self.dropped_frames,
            ),
            (
                "skywave_stale_frames_total",
                "frames not sent because the publish was older than limits.max_frame_age, less its delivery allowance (one per socket: in its queue, or still in the fan-out queue)",
                &self.stale_frames,
            ),
            (
                "skywave_lagged_notices_total",
                "lagged notices sent to slow sockets",
                &self.lagged_notices,
            ),
            (
                "skywave_write_timeouts_total",
                "sockets dropped because a write did not complete in time",
                &self.write_timeouts,
            ),
            (
                "skywave_stalled_closes_total",
                "sockets closed with 1013: nothing taken for 2 s while their queue overflowed",
                &self.stalled_closes,
            ),
            (
                "skywave_shutdown_unflushed_total",
                "sockets closed at shutdown before taking every queued frame",
                &self.shutdown_unflushed,
            ),
            (
                "skywave_idle_timeouts_total",
                "sockets dropped for silence",
                &self.idle_timeouts,
            ),
            (
                "skywave_oversize_messages_total",
                "sockets closed for an inbound message over 4 KiB",
                &self.oversize_messages,
            ),
            (
                "skywave_api_requests_total",
                "internal API requests",
                &self.api_requests,
            ),
        ] {
            counter(&mut out, name, help, load(value));
        }

        header(&mut out, "skywave_mode", "gauge", "1 for the current mode");
        for candidate in ["single", "cluster", "degraded"] {
            let _ = writeln!(
                out,
                "skywave_mode{{mode=\"{candidate}\"}} {}",
                u8::from(candidate == snapshot.mode)
            );
        }
        if let Some(c) = &snapshot.cluster {
            for (name, help, value) in [
                ("skywave_redis_joins_total", "times this node (re)joined the cluster", c.joins),
                ("skywave_redis_subscriber_restarts_total", "times the subscription was lost and restarted", c.subscriber_restarts),
                ("skywave_redis_command_failures_total", "redis commands that failed (timed out, lost their connection, or were refused)", c.command_failures),
                ("skywave_envelopes_received_total", "envelopes received from redis", c.envelopes_received),
                ("skywave_envelopes_malformed_total", "malformed envelopes skipped", c.envelopes_malformed),
                ("skywave_envelopes_published_total", "envelopes published to redis", c.envelopes_published),
                ("skywave_envelopes_dropped_total", "envelopes never published (outbox full, or older than the replay window)", c.envelopes_dropped),
                ("skywave_redis_publish_retries_total", "publish attempts that failed and were retried in order", c.publish_retries),
                ("skywave_cluster_task_panics_total", "cluster tasks (subscriber, publisher, heartbeat) that panicked and were restarted", c.task_panics),
                ("skywave_resync_notices_total", "times every socket was told to resync after the node was out of the cluster", c.resyncs),
            ] {
                counter(&mut out, name, help, value);
            }
            gauge(
                &mut out,
                "skywave_fleet_config_mismatches",
                "live nodes whose worker_secret, topic_ttl or key prefix differ from this node's (by fingerprint)",
                c.config_mismatches,
            );
            gauge(
                &mut out,
                "skywave_envelopes_waiting",
                "envelopes waiting for redis in the outbox",
                c.outbox,
            );
            gauge(
                &mut out,
                "skywave_registry_pending_changes",
                "registrations and unregistrations redis has not taken yet",
                c.registry_pending,
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
