//! The dashboard's live data: one Server-Sent Event (`sample`, a JSON
//! [`Sample`]) a second on the one stream each open page holds. Rates are
//! counter deltas between two samples of the same stream; the roster is read
//! from the broker at most once a second however many pages are open. The
//! stream ends when the node shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::Mode;
use crate::metrics::{Counters, LATENCY_BUCKETS};
use crate::node::Node;
use crate::roster::{age, RosterEntry};

pub const PERIOD: Duration = Duration::from_secs(1);

/// What one event carries.
#[derive(Debug, Serialize)]
pub struct Sample {
    pub node_id: String,
    pub mode: &'static str,
    /// `not used` (single mode), `connected`, or `away`.
    pub redis: &'static str,
    pub redis_error: Option<String>,
    /// Whether `nodes` is the cluster's roster; `false` while Redis is away
    /// (then `nodes` holds this node alone).
    pub roster_known: bool,
    pub nodes: Vec<NodeRow>,
    pub max_sockets: u64,
    pub registered_topics: u64,
    /// `None` on a stream's first sample: a rate needs two.
    pub publishes_per_second: Option<f64>,
    pub deliveries_per_second: Option<f64>,
    pub publishes: u64,
    pub deliveries: u64,
    pub dropped_frames: u64,
    pub lagged_notices: u64,
    /// `None` in single mode, which has no envelopes.
    pub envelopes_dropped: Option<u64>,
    pub refusals: Vec<(&'static str, u64)>,
    pub latency: Latency,
}

/// A roster entry as the page shows it. `mode` and `redis` are known for
/// this node only; other nodes do not publish them in the roster.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    #[serde(flatten)]
    pub entry: RosterEntry,
    pub this_node: bool,
    pub seen_seconds_ago: Option<u64>,
    pub mode: Option<&'static str>,
    pub redis: Option<&'static str>,
}

/// The publish-handling histogram since start, per bucket (not cumulative).
#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    /// `(upper bound in seconds, publishes in this bucket)`; `None` = over
    /// the last bound.
    pub buckets: Vec<(Option<f64>, u64)>,
    pub count: u64,
    pub mean_seconds: Option<f64>,
}

/// The event stream one page holds.
pub fn stream(node: Arc<Node>, roster: Arc<RosterCache>) -> impl IntoResponse {
    let shutdown = node.shutdown().clone().cancelled_owned();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (node, roster, tick, None::<(Instant, Counters)>);
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let (node, roster, tick, previous) = &mut state;
        tick.tick().await;
        let now = Instant::now();
        let counters = node.metrics().counters();
        let sample = sample(node, roster, &counters, previous.as_ref(), now).await;
        *previous = Some((now, counters));
        let event = Event::default()
            .event("sample")
            .json_data(&sample)
            .unwrap_or_else(|_| Event::default().comment("sample not encoded"));
        Some((Ok::<_, Infallible>(event), state))
    });
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Sse::new(events.take_until(shutdown)),
    )
}

async fn sample(
    node: &Node,
    roster: &RosterCache,
    counters: &Counters,
    previous: Option<&(Instant, Counters)>,
    now: Instant,
) -> Sample {
    let mode = node.mode();
    let redis = match mode {
        Mode::Single => "not used",
        Mode::Cluster => "connected",
        Mode::Degraded => "away",
    };
    let own = node.own_entry();
    let (mut entries, roster_known) = match roster.read(node).await {
        Some(entries) => (entries, true),
        None => (Vec::new(), false),
    };
    match entries.iter_mut().find(|entry| entry.id == own.id) {
        Some(entry) => *entry = own,
        None => entries.push(own),
    }
    let seen_now = time::OffsetDateTime::now_utc();
    let nodes = entries
        .into_iter()
        .map(|entry| {
            let this_node = entry.id == node.node_id();
            NodeRow {
                seen_seconds_ago: age(&entry, seen_now).map(|a| a.as_secs()),
                mode: this_node.then_some(mode.as_str()),
                redis: this_node.then_some(redis),
                this_node,
                entry,
            }
        })
        .collect();
    let snapshot = node.snapshot();
    let rate = |pick: fn(&Counters) -> u64| {
        previous.and_then(|(at, before)| per_second(pick(before), pick(counters), now - *at))
    };
    Sample {
        node_id: node.node_id().to_string(),
        mode: mode.as_str(),
        redis,
        redis_error: node.redis_error(),
        roster_known,
        nodes,
        max_sockets: snapshot.max_sockets,
        registered_topics: snapshot.registered_topics,
        publishes_per_second: rate(|c| c.publishes),
        deliveries_per_second: rate(|c| c.deliveries),
        publishes: counters.publishes,
        deliveries: counters.deliveries,
        dropped_frames: counters.dropped_frames,
        lagged_notices: counters.lagged_notices,
        envelopes_dropped: snapshot.cluster.map(|c| c.envelopes_dropped),
        refusals: counters.refusals.to_vec(),
        latency: latency(counters),
    }
}

/// A counter's rate over `elapsed`; `None` when no time has passed.
pub fn per_second(before: u64, after: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| after.saturating_sub(before) as f64 / seconds)
}

/// Per-bucket counts from the cumulative Prometheus buckets.
pub fn latency(counters: &Counters) -> Latency {
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
    let mut below = 0;
    for (bound, cumulative) in LATENCY_BUCKETS.iter().zip(counters.latency_buckets) {
        buckets.push((Some(*bound), cumulative.saturating_sub(below)));
        below = cumulative;
    }
    buckets.push((None, counters.latency_count.saturating_sub(below)));
    let count = counters.latency_count;
    Latency {
        buckets,
        count,
        mean_seconds: (count > 0).then(|| counters.latency_sum_seconds / count as f64),
    }
}

/// The roster as last read, shared by every open page so that it is read
/// from the broker at most once per [`PERIOD`].
#[derive(Default)]
pub struct RosterCache {
    last: tokio::sync::Mutex<Option<(Instant, Option<Vec<RosterEntry>>)>>,
}

impl RosterCache {
    /// The roster (`None` while it cannot be read), at most a period old.
    async fn read(&self, node: &Node) -> Option<Vec<RosterEntry>> {
        // Held across the read on purpose: pages that ask meanwhile wait
        // for this read instead of starting their own.
        let mut last = self.last.lock().await;
        if let Some((at, entries)) = last.as_ref() {
            if at.elapsed() < PERIOD {
                return entries.clone();
            }
        }
        let entries = node.nodes().await;
        *last = Some((Instant::now(), entries.clone()));
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_elapsed_time() {
        assert_eq!(per_second(10, 30, Duration::from_secs(2)), Some(10.0));
        assert_eq!(per_second(10, 15, Duration::from_millis(500)), Some(10.0));
        assert_eq!(per_second(10, 10, Duration::from_secs(1)), Some(0.0));
        assert_eq!(per_second(10, 20, Duration::ZERO), None);
    }

    #[test]
    fn histogram_buckets_are_split_out_of_the_cumulative_counts() {
        // Two publishes within 0.1 ms, one within 1 ms, one over 1 s.
        let counters = Counters {
            latency_buckets: [2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3],
            latency_count: 4,
            latency_sum_seconds: 2.0,
            ..Counters::default()
        };
        let latency = latency(&counters);
        assert_eq!(latency.buckets.len(), 13);
        assert_eq!(latency.buckets[0], (Some(0.0001), 2));
        assert_eq!(latency.buckets[3], (Some(0.001), 1));
        assert_eq!(latency.buckets[12], (None, 1));
        assert_eq!(latency.buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(latency.mean_seconds, Some(0.5));
        assert_eq!(
            super::latency(&Counters::default()).mean_seconds,
            None,
            "no publish, no mean"
        );
    }
}
