//! The supervised subscriber: joins (subscribe, verify), delivers envelopes
//! from then on while it settles (writes back what is pending, the roster
//! entry, the registry copy), and watches its own connection. It alone
//! sets the broker's health, and so the node's mode.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::broker::{decode_envelope, BrokerError, Subscription};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How often an unchanged reason for being degraded is logged again.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Pings of the subscriber's own connection that may time out in a row
/// before the subscription counts as lost (one slow answer is not a loss).
const PING_TIMEOUTS_TOLERATED: u32 = 1;

impl Cluster {
    pub(super) async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut attempts: u64 = 0;
        let mut last_warning: Option<tokio::time::Instant> = None;
        let mut server: Option<String> = None;
        loop {
            attempts += 1;
            match self.join(&mut server).await {
                Ok((subscription, restarted)) => {
                    let first = self.counters.joins.fetch_add(1, Ordering::Relaxed) == 0;
                    let verb = if first { "joined" } else { "rejoined" };
                    tracing::info!(channel = %self.broker.channel(), attempts, "{verb} the cluster");
                    // Sockets that were here while the node was not
                    // subscribed may have missed other nodes' events.
                    if !first || attempts > 1 {
                        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                        self.dispatcher.broadcast(crate::frames::resync()).await;
                    }
                    self.set_last_error(None);
                    attempts = 0;
                    backoff = BACKOFF_START;
                    last_warning = None;
                    // Deliver from the moment the subscription is
                    // verified: the settling's broker round trips (bulk
                    // reads of seconds while a restarted JetStream recovers)
                    // must not hold other nodes' events back, nor the
                    // resync notice, while the status already says
                    // `cluster`. Settling runs to its end (a write-back cut
                    // half-way could write again what the broker took).
                    let settle = async {
                        tokio::select! {
                            () = self.settle(restarted) => {}
                            () = shutdown.cancelled() => {}
                        }
                    };
                    let (reason, ()) = tokio::join!(self.listen(subscription, &shutdown), settle);
                    self.health.set_connected(false);
                    if shutdown.is_cancelled() {
                        return;
                    }
                    self.counters
                        .subscriber_restarts
                        .fetch_add(1, Ordering::Relaxed);
                    self.set_last_error(reason.clone());
                    tracing::warn!(%reason, broker = self.broker.kind(), "lost the {} subscription: degraded until it is back", self.broker.kind());
                }
                Err(error) => {
                    self.health.set_connected(false);
                    let changed = self.set_last_error(error.to_string());
                    // Warn when the reason changes, and once a minute while
                    // it lasts (with the count), never once per retry.
                    let due = last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY);
                    if changed || due {
                        last_warning = Some(tokio::time::Instant::now());
                        tracing::warn!(%error, attempts, "{} unavailable: running alone (degraded), retrying in the background", self.broker.kind());
                    } else {
                        tracing::debug!(%error, attempts, "{} still unavailable", self.broker.kind());
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    /// Subscribes and verifies the subscription, then reports `cluster`;
    /// also says whether the broker is a new server (it restarted).
    async fn join(&self, server: &mut Option<String>) -> Result<(Subscription, bool), BrokerError> {
        let subscription = self.broker.subscribe().await?;
        let subscribers = self.broker.subscribers().await?;
        if subscribers < 1 {
            return Err(BrokerError::Unavailable(format!(
                "subscribed, but PUBSUB NUMSUB {} = {subscribers}",
                self.broker.channel()
            )));
        }
        let id = self.broker.server_id().await?;
        let restarted = server.as_ref().is_some_and(|known| *known != id);
        *server = Some(id);
        if restarted {
            self.registry.note_restart();
        }
        self.health.set_connected(true);
        Ok((subscription, restarted))
    }

    /// After a join: writes back what the registry could not write while
    /// away (all of the local mirror, where keys are missing, if the broker
    /// restarted), the status topic and this node's roster entry, and
    /// copies the cluster's registry. Each step is bounded by the broker's
    /// command deadlines; what fails is retried by the heartbeat.
    async fn settle(&self, restarted: bool) {
        if let Err(error) = self.registry.refresh_status_topic().await {
            tracing::debug!(%error, "could not register the status topic yet; the heartbeat retries");
        }
        match self.registry.write_back(&self.broker).await {
            Ok(0) => {}
            Ok(written) => tracing::info!(
                changes = written,
                restarted,
                "wrote local registry changes to the broker"
            ),
            Err(error) => {
                tracing::warn!(%error, pending = self.registry.pending(), "could not write local registry changes yet; the heartbeat retries")
            }
        }
        self.write_presence().await;
        self.refresh_seen().await;
    }

    /// Delivers envelopes until the subscription fails; returns why.
    async fn listen(&self, mut subscription: Subscription, shutdown: &CancellationToken) -> String {
        let mut ping = tokio::time::interval(self.identity.roster.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut timeouts = 0;
        loop {
            let check = tokio::select! {
                message = subscription.next() => match message {
                    Some(message) => {
                        self.receive(message.bytes()).await;
                        false
                    }
                    None => return "the subscription stream closed".to_string(),
                },
                _ = ping.tick() => true,
                // A pooled command lost its connection: check our own.
                _ = self.broker.trouble() => true,
                _ = shutdown.cancelled() => return "shutdown".to_string(),
            };
            if !check {
                continue;
            }
            match subscription.ping().await {
                Ok(()) => timeouts = 0,
                Err(error) if error.timed_out().is_some() && timeouts < PING_TIMEOUTS_TOLERATED => {
                    let after = error.timed_out();
                    timeouts += 1;
                    tracing::debug!(?after, "a subscriber ping timed out; trying again");
                    ping.reset_immediately();
                }
                Err(error) => return format!("ping failed: {error}"),
            }
        }
    }

    async fn receive(&self, bytes: &[u8]) {
        self.counters
            .envelopes_received
            .fetch_add(1, Ordering::Relaxed);
        match decode_envelope(bytes) {
            Ok(envelope) => {
                if envelope.origin_id.as_deref() == Some(self.identity.id.as_str()) {
                    return;
                }
                let frame = crate::frames::push(&envelope.payload);
                self.dispatcher.dispatch(envelope.topic, frame).await;
            }
            Err(error) => {
                self.counters
                    .envelopes_malformed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, bytes = bytes.len(), "skipped a malformed envelope");
            }
        }
    }
}
