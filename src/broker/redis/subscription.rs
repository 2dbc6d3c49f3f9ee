//! The subscriber's dedicated connections: envelopes in, pings out.
//!
//! - One server: `SUBSCRIBE <prefix>events` on its own connection.
//! - A Sentinel set: the same on the master the sentinels name, plus a
//!   connection to a sentinel subscribed to `+switch-master`. A switch of
//!   this master ends the subscription (and stops commands going to the old
//!   master) at once; every ping also asks the sentinels which master they
//!   name, so a switch whose announcement was missed ends it too.
//! - A Redis Cluster: classic `SUBSCRIBE` on one master (Redis Cluster
//!   copies `PUBLISH` to every node), or, sharded, one RESP3 connection per
//!   master with `SSUBSCRIBE` of every shard channel whose slot it owns. A
//!   lost connection or a `sunsubscribe` from the server (the slot moved)
//!   ends the subscription; the supervisor's rejoin reads the topology again
//!   and subscribes every shard afresh.
//!
//! Ending is the one reaction to every change: the supervisor then runs the
//! same join (verify, write back) as after any loss.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind};

use super::RedisBroker;
use crate::broker::link::{within, SentinelShared, Target};
use crate::broker::BrokerError;

pub struct RedisSubscription {
    kind: Kind,
    timeout: Duration,
}

enum Kind {
    Classic {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
        watch: Option<SentinelWatch>,
    },
    Sharded {
        pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
        /// The subscriber's own cluster connection (one per master).
        conn: redis::cluster_async::ClusterConnection,
    },
}

/// A sentinel's `+switch-master` announcements, and what the master was.
struct SentinelWatch {
    _sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    shared: Arc<SentinelShared>,
    master: String,
}

/// One message from the channel, read in place (no copy).
pub struct RedisMessage(redis::Msg);

impl RedisMessage {
    pub fn bytes(&self) -> &[u8] {
        self.0.get_payload_bytes()
    }
}

impl RedisBroker {
    /// Dedicated connections subscribed to the events (see the module).
    pub async fn subscribe(&self) -> Result<RedisSubscription, BrokerError> {
        let (connect, timeout) = self.timeouts();
        let kind = match self.link.target() {
            Target::Direct(direct) => {
                self.classic(direct.client(), None, connect, timeout)
                    .await?
            }
            Target::Sentinel(set) => {
                let (direct, sentinel) = set.resolve(connect).await?;
                let watch =
                    SentinelWatch::open(&sentinel, set.shared(), direct.address(), connect).await?;
                self.classic(direct.client(), Some(watch), connect, timeout)
                    .await?
            }
            Target::Cluster(cluster) => {
                let topology = cluster.refresh_topology(connect).await?;
                if self.shards.is_empty() {
                    let master = topology.masters.first().ok_or_else(|| {
                        BrokerError::Unavailable("the Redis Cluster has no master".to_string())
                    })?;
                    let client = cluster.node_client(
                        &master.host,
                        master.port,
                        redis::ProtocolVersion::RESP2,
                    )?;
                    self.classic(&client, None, connect, timeout).await?
                } else {
                    self.sharded(cluster, connect, timeout).await?
                }
            }
        };
        Ok(RedisSubscription { kind, timeout })
    }

    async fn classic(
        &self,
        client: &redis::Client,
        watch: Option<SentinelWatch>,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Kind, BrokerError> {
        let pubsub = within(connect, client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        within(timeout, sink.subscribe(&self.channel)).await?;
        Ok(Kind::Classic {
            sink,
            stream,
            watch,
        })
    }

    async fn sharded(
        &self,
        cluster: &crate::broker::link::ClusterLink,
        connect: Duration,
        timeout: Duration,
    ) -> Result<Kind, BrokerError> {
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut conn = cluster.subscriber(tx, connect).await?;
        // One channel per SSUBSCRIBE (several must share a slot); each goes
        // to the master that owns its slot.
        for shard in &self.shards {
            within(timeout, conn.ssubscribe(shard)).await?;
        }
        Ok(Kind::Sharded { pushes, conn })
    }
}

impl SentinelWatch {
    async fn open(
        sentinel: &redis::Client,
        shared: Arc<SentinelShared>,
        master: &str,
        connect: Duration,
    ) -> Result<SentinelWatch, BrokerError> {
        let pubsub = within(connect, sentinel.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        within(connect, sink.subscribe("+switch-master")).await?;
        Ok(SentinelWatch {
            _sink: sink,
            stream,
            shared,
            master: master.to_string(),
        })
    }

    /// `+switch-master <name> <old ip> <old port> <new ip> <new port>` of
    /// this master.
    fn is_switch(&self, message: &redis::Msg) -> bool {
        let text = String::from_utf8_lossy(message.get_payload_bytes());
        text.split_whitespace().next() == Some(self.shared.master_name())
    }
}

impl RedisSubscription {
    /// The next envelope; `None` once the subscription is gone (or must be
    /// renewed: the master switched, a slot moved).
    pub async fn next(&mut self) -> Option<RedisMessage> {
        match &mut self.kind {
            Kind::Classic {
                stream,
                watch: None,
                ..
            } => stream.next().await.map(RedisMessage),
            Kind::Classic {
                stream,
                watch: Some(watch),
                ..
            } => loop {
                tokio::select! {
                    message = stream.next() => return message.map(RedisMessage),
                    announcement = watch.stream.next() => match announcement {
                        None => {
                            tracing::info!("lost the connection to the sentinel; asking the sentinels again");
                            return None;
                        }
                        Some(announcement) if watch.is_switch(&announcement) => {
                            watch.shared.invalidate();
                            tracing::info!(
                                switch = %String::from_utf8_lossy(announcement.get_payload_bytes()),
                                old = %watch.master,
                                "the sentinels switched masters"
                            );
                            return None;
                        }
                        Some(_) => continue,
                    },
                }
            },
            Kind::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(message) = redis::Msg::from_push_info(push) {
                            return Some(RedisMessage(message));
                        }
                    }
                    PushKind::Disconnection => {
                        tracing::info!("lost a shard subscriber's connection");
                        return None;
                    }
                    PushKind::SUnsubscribe => {
                        tracing::info!(data = ?push.data, "a shard channel moved (sunsubscribe from the server)");
                        return None;
                    }
                    _ => continue,
                }
            },
        }
    }

    /// A round trip on each of the subscriber's own connections; with a
    /// Sentinel set, also whether the sentinels still name the same master.
    pub async fn ping(&mut self) -> Result<(), BrokerError> {
        let timeout = self.timeout;
        match &mut self.kind {
            Kind::Classic { sink, watch, .. } => {
                within(timeout, sink.ping::<redis::Value>()).await?;
                if let Some(watch) = watch {
                    // All sentinels away: the master still answers, keep it.
                    if let Ok(((host, port), _)) = watch.shared.ask(timeout).await {
                        let named = format!("{host}:{port}");
                        if named != watch.master {
                            watch.shared.invalidate();
                            return Err(BrokerError::Unavailable(format!(
                                "the sentinels now name {named} as master, not {}",
                                watch.master
                            )));
                        }
                    }
                }
                Ok(())
            }
            Kind::Sharded { conn, .. } => {
                let ping = conn.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    )),
                );
                within(timeout, ping).await.map(|_| ())
            }
        }
    }
}
