//! The heartbeat, every 5 s while in the cluster: this node's roster entry
//! (and pruning of dead ones), the pinned status topic, registry changes
//! still pending, and the topic count that metrics report.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Cluster, Mode};
use crate::roster::ConfigMatch;

/// How often the full copy of the cluster's registry is refreshed (lookups
/// refresh single topics in between).
const COPY_EVERY: Duration = Duration::from_secs(30);

impl Cluster {
    pub(super) async fn heartbeat_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // The status topic must outlive short TTLs too.
        let heartbeat = self.identity.roster.heartbeat;
        let period = heartbeat
            .min(self.registry.ttl() / 2)
            .max(Duration::from_millis(200));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_presence = tokio::time::Instant::now();
        let mut last_copy = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if self.mode() != Mode::Cluster {
                continue;
            }
            if let Err(error) = self.registry.refresh_status_topic().await {
                tracing::debug!(%error, "could not refresh the status topic");
            }
            if self.registry.needs_write_back() {
                match self.registry.write_back(&self.broker).await {
                    Ok(written) => {
                        tracing::info!(changes = written, "wrote pending registry changes to redis")
                    }
                    Err(error) => {
                        tracing::debug!(%error, "pending registry changes still not written")
                    }
                }
            }
            if last_presence.elapsed() >= heartbeat.saturating_sub(Duration::from_millis(100)) {
                last_presence = tokio::time::Instant::now();
                self.write_presence().await;
                // The count metrics report (status calls count on demand).
                let _ = self.registry.count().await;
            }
            if last_copy.elapsed() >= COPY_EVERY {
                last_copy = tokio::time::Instant::now();
                self.refresh_seen().await;
            }
        }
    }

    /// Refreshes the copy of the cluster's registry that answers while
    /// Redis is away.
    pub(super) async fn refresh_seen(&self) {
        match self.registry.refresh_seen(&self.broker).await {
            Ok(topics) => tracing::debug!(topics, "copied the cluster's registry"),
            Err(error) => tracing::debug!(%error, "could not copy the cluster's registry"),
        }
    }

    /// Writes this node's roster entry and prunes entries of dead nodes.
    pub(super) async fn write_presence(&self) {
        let entry = self.identity.entry(self.hub.counts());
        let Ok(json) = serde_json::to_string(&entry) else {
            return;
        };
        if let Err(error) = self.broker.roster_write(&self.identity.id, &json).await {
            tracing::debug!(%error, "could not write the roster entry");
            return;
        }
        if let Ok(raw) = self.broker.roster().await {
            let (entries, prune) = self.identity.evaluate(raw, time::OffsetDateTime::now_utc());
            let mismatches = entries
                .iter()
                .filter(|e| e.alive && e.config_match == Some(ConfigMatch::Different))
                .count();
            self.note_mismatches(mismatches);
            let prune: Vec<String> = prune
                .into_iter()
                .filter(|id| *id != self.identity.id)
                .collect();
            if let Err(error) = self.broker.roster_remove(&prune).await {
                tracing::debug!(%error, "could not prune the roster");
            }
        }
    }
}
