//! The subscription to `<prefix>.events`, and its own ping: a message to a
//! subject only this subscription listens to, which must come back through
//! the server within the command timeout. Any loss of the connection since
//! the subscription began ends it (the client would resubscribe by itself,
//! but what was published meanwhile is gone: the node must resync).

use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Link, NatsBroker};
use crate::broker::BrokerError;

pub struct NatsSubscription {
    events: Subscriber,
    pings: Subscriber,
    ping_subject: String,
    sent: u64,
    client: Client,
    link: watch::Receiver<Link>,
    losses: u64,
    timeout: Duration,
}

/// One envelope as it arrived (the payload is shared, not copied).
pub struct NatsMessage(async_nats::Message);

impl NatsMessage {
    pub fn bytes(&self) -> &[u8] {
        &self.0.payload
    }
}

impl NatsBroker {
    /// Connects (the first time), opens the buckets (or keeps the ones of
    /// the last join while JetStream does not answer), subscribes, and
    /// checks with one ping that the server has the subscription.
    pub async fn subscribe(&self) -> Result<NatsSubscription, BrokerError> {
        let mut link = self.link.subscribe();
        let losses = link.borrow_and_update().losses;
        let client = self.client().await?.clone();
        let ensured = self
            .within_for(self.settings.command_timeout, self.ensure_buckets(&client))
            .await;
        if let Err(error) = ensured {
            // JetStream may be electing leaders after a server of a cluster
            // went (NATS takes seconds): fan-out needs only core NATS, so
            // the join goes on with the buckets known from before, whose
            // reads and writes fail (pending, written back) until it is back.
            if !self.has_buckets() {
                return Err(error);
            }
            tracing::warn!(%error, "nats: JetStream did not answer; joining for fan-out, the registry catches up when it does");
        }
        let ping_subject = format!("{}{:016x}", self.ping_prefix, rand::random::<u64>());
        let events = self.within(client.subscribe(self.subject.clone())).await?;
        let pings = self.within(client.subscribe(ping_subject.clone())).await?;
        let mut subscription = NatsSubscription {
            events,
            pings,
            ping_subject,
            sent: 0,
            client,
            link,
            losses,
            timeout: self.settings.command_timeout,
        };
        subscription
            .ping()
            .await
            .inspect_err(|_| self.note_failure())?;
        Ok(subscription)
    }
}

impl NatsSubscription {
    fn lost(&self) -> bool {
        self.link.borrow().losses != self.losses
    }

    /// The next envelope; `None` once the connection was lost.
    pub async fn next(&mut self) -> Option<NatsMessage> {
        loop {
            if self.lost() {
                return None;
            }
            tokio::select! {
                biased;
                changed = self.link.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                message = self.events.next() => return message.map(NatsMessage),
            }
        }
    }

    /// A message through the server to this subscription's own subject.
    pub async fn ping(&mut self) -> Result<(), BrokerError> {
        if self.lost() {
            return Err(BrokerError::NatsUnavailable(
                "the connection was lost since the subscription began".to_string(),
            ));
        }
        self.sent += 1;
        let token = self.sent.to_string();
        let publish = self
            .client
            .publish(self.ping_subject.clone(), token.clone().into());
        let echo = async {
            publish
                .await
                .map_err(|e| BrokerError::NatsUnavailable(e.to_string()))?;
            // An answer to an earlier ping that timed out may come first.
            while let Some(message) = self.pings.next().await {
                if message.payload == token.as_bytes() {
                    return Ok(());
                }
            }
            Err(BrokerError::NatsUnavailable(
                "the ping subscription closed".to_string(),
            ))
        };
        tokio::time::timeout(self.timeout, echo)
            .await
            .unwrap_or(Err(BrokerError::NatsTimeout(self.timeout)))
    }
}
