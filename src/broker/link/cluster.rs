//! A Redis Cluster: one multiplexed connection that follows the slot map
//! (MOVED, ASK and topology changes are the `redis` crate's cluster
//! client's), the topology as `CLUSTER SLOTS` last told it (masters and the
//! slots they own, for per-master `SCAN`s and the shard subscriptions), and
//! clients of single nodes for the subscriber's dedicated connections.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::{classify, open_client, server_info, tls_certificates, within};
use crate::broker::BrokerError;
use crate::config::{Credentials, RedisSettings};

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

pub struct ClusterLink {
    /// Built in `new`, always `Some` after it.
    client: Option<ClusterClient>,
    seeds: Vec<(String, u16)>,
    /// Connected at the first command (a node starts with Redis away).
    conn: Mutex<Option<ClusterConnection>>,
    topology: RwLock<Option<Topology>>,
    auth: Credentials,
    tls: bool,
    settings: RedisSettings,
}

/// The masters and the slot ranges each owns, plus every node's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub masters: Vec<Master>,
    /// Masters and replicas, `host:port`.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Master {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

impl Topology {
    pub fn owner(&self, slot: u16) -> Option<&Master> {
        self.masters.iter().find(|m| m.owns(slot))
    }

    /// Every slot has an owner.
    pub fn complete(&self) -> bool {
        let mut ranges: Vec<(u16, u16)> = self
            .masters
            .iter()
            .flat_map(|m| m.slots.iter().copied())
            .collect();
        ranges.sort();
        let mut next: u32 = 0;
        for (a, b) in ranges {
            if u32::from(a) > next {
                return false;
            }
            next = next.max(u32::from(b) + 1);
        }
        next >= u32::from(SLOTS)
    }

    /// Reads a `CLUSTER SLOTS` answer: `[[start, end, [ip, port, id, …],
    /// replica…], …]`.
    pub fn from_slots(value: &redis::Value) -> Result<Topology, String> {
        let ranges = redis::from_redis_value_ref::<Vec<Vec<redis::Value>>>(value)
            .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
        let mut topology = Topology::default();
        for range in ranges {
            let [start, end, nodes @ ..] = range.as_slice() else {
                return Err("CLUSTER SLOTS: a range without bounds".to_string());
            };
            let bound = |v: &redis::Value| {
                redis::from_redis_value_ref::<u16>(v).map_err(|e| format!("CLUSTER SLOTS: {e}"))
            };
            let (start, end) = (bound(start)?, bound(end)?);
            for (index, node) in nodes.iter().enumerate() {
                let node = redis::from_redis_value_ref::<Vec<redis::Value>>(node)
                    .map_err(|e| format!("CLUSTER SLOTS: {e}"))?;
                let (Some(host), Some(port)) = (
                    node.first()
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok()),
                    node.get(1)
                        .and_then(|v| redis::from_redis_value_ref::<u16>(v).ok()),
                ) else {
                    return Err("CLUSTER SLOTS: a node without address".to_string());
                };
                let address = format!("{host}:{port}");
                if !topology.nodes.contains(&address) {
                    topology.nodes.push(address);
                }
                if index > 0 {
                    continue;
                }
                match topology
                    .masters
                    .iter_mut()
                    .find(|m| m.host == host && m.port == port)
                {
                    Some(master) => master.slots.push((start, end)),
                    None => topology.masters.push(Master {
                        host,
                        port,
                        slots: vec![(start, end)],
                    }),
                }
            }
        }
        topology
            .masters
            .sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        Ok(topology)
    }
}

impl ClusterLink {
    pub fn new(
        settings: &RedisSettings,
        seeds: Vec<(String, u16)>,
        auth: Credentials,
        tls: bool,
    ) -> Result<ClusterLink, BrokerError> {
        super::install_crypto_provider();
        let link = ClusterLink {
            client: None,
            seeds,
            conn: Mutex::new(None),
            topology: RwLock::new(None),
            auth,
            tls,
            settings: settings.clone(),
        };
        let client = link.client(redis::ProtocolVersion::RESP2, None)?;
        Ok(ClusterLink {
            client: Some(client),
            ..link
        })
    }

    /// A cluster client from the seeds (RESP3 with a push sender: for the
    /// sharded subscriber).
    fn client(
        &self,
        protocol: redis::ProtocolVersion,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterClient, BrokerError> {
        let mut infos = Vec::with_capacity(self.seeds.len());
        for (host, port) in &self.seeds {
            infos.push(server_info(host, *port, &self.auth, 0, self.tls, protocol)?);
        }
        let settings = &self.settings;
        let mut builder = ClusterClient::builder(infos)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.command_timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .use_protocol(protocol);
        if let Some(pushes) = pushes {
            builder = builder.push_sender(pushes);
        }
        if let Some(user) = &self.auth.username {
            builder = builder.username(user);
        }
        if let Some(password) = &self.auth.password {
            builder = builder.password(password);
        }
        if self.tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if let Some(certificates) = tls_certificates(settings)? {
                builder = builder.certs(certificates);
            }
        }
        builder
            .build()
            .map_err(|e| BrokerError::Config(format!("redis_url: {e}")))
    }

    /// A connection of its own for the sharded subscriber (RESP3): its
    /// pushes (messages, `sunsubscribe`, lost node connections) go to
    /// `pushes`.
    pub async fn subscriber(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
        timeout: Duration,
    ) -> Result<ClusterConnection, BrokerError> {
        let client = self.client(redis::ProtocolVersion::RESP3, Some(pushes))?;
        within(timeout, client.get_async_connection()).await
    }

    /// The shared connection, connected first if needed.
    pub async fn connection(&self, timeout: Duration) -> Result<ClusterConnection, BrokerError> {
        if let Some(conn) = self.conn.lock().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| BrokerError::Config("cluster client not built".to_string()))?;
        let conn = within(timeout, client.get_async_connection()).await?;
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    /// Classifies a failed command; after connection trouble the next
    /// command connects afresh (from the seeds), so a cluster that was
    /// down altogether is found again however it came back.
    pub fn failed(&self, error: redis::RedisError) -> BrokerError {
        let error = classify(error);
        if matches!(error, BrokerError::Unavailable(_)) {
            if let Ok(mut slot) = self.conn.lock() {
                *slot = None;
            }
        }
        error
    }

    /// The topology as last read.
    pub fn topology(&self) -> Option<Topology> {
        self.topology.read().ok().and_then(|t| t.clone())
    }

    /// Reads the topology (`CLUSTER SLOTS` on any node) and keeps it.
    pub async fn refresh_topology(&self, timeout: Duration) -> Result<Topology, BrokerError> {
        let read = async {
            let mut conn = self.connection(timeout).await?;
            let value = conn
                .route_command(
                    redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await
                .map_err(|e| self.failed(e))?;
            Topology::from_slots(&value).map_err(BrokerError::Refused)
        };
        let topology = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| BrokerError::Timeout(timeout))??;
        if !topology.complete() {
            return Err(BrokerError::Unavailable(
                "the Redis Cluster does not cover every slot yet".to_string(),
            ));
        }
        if let Ok(mut slot) = self.topology.write() {
            *slot = Some(topology.clone());
        }
        Ok(topology)
    }

    /// The kept topology, or a fresh one.
    pub async fn known_topology(&self, timeout: Duration) -> Result<Topology, BrokerError> {
        match self.topology() {
            Some(topology) => Ok(topology),
            None => self.refresh_topology(timeout).await,
        }
    }

    /// A client of one node (`host:port`), with the cluster's credentials
    /// and TLS settings, for a dedicated connection.
    pub fn node_client(
        &self,
        host: &str,
        port: u16,
        protocol: redis::ProtocolVersion,
    ) -> Result<redis::Client, BrokerError> {
        let info = server_info(host, port, &self.auth, 0, self.tls, protocol)?;
        open_client(&self.settings, info, &format!("{host}:{port}"))
    }

    pub(super) async fn query_node<T: redis::FromRedisValue>(
        &self,
        node: &str,
        cmd: redis::Cmd,
        timeout: Duration,
    ) -> Result<T, BrokerError> {
        let (host, port) = split_address(node)?;
        let mut conn = self.connection(timeout).await?;
        let value = conn
            .route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
            )
            .await
            .map_err(|e| self.failed(e))?;
        redis::from_redis_value::<T>(value).map_err(|e| BrokerError::Refused(e.to_string()))
    }

    pub(super) async fn pipeline_node(
        &self,
        node: &str,
        pipe: redis::Pipeline,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<redis::Value>, BrokerError> {
        let (host, port) = split_address(node)?;
        let mut conn = self.connection(timeout).await?;
        conn.route_pipeline(
            pipe,
            0,
            count,
            SingleNodeRoutingInfo::ByAddress { host, port },
        )
        .await
        .map_err(|e| self.failed(e))
    }
}

fn split_address(node: &str) -> Result<(String, u16), BrokerError> {
    node.rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_string(), port.parse().ok()?)))
        .ok_or_else(|| BrokerError::Config(format!("{node:?} is not host:port")))
}

/// The slot of a key, as Redis computes it (CRC16/XMODEM of the key, or of
/// its `{hash tag}` when it has a non-empty one).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // Values from `CLUSTER KEYSLOT` of a real Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"123456789"), 12739);
    }

    #[test]
    fn topology_from_cluster_slots() {
        use redis::Value;
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("127.0.0.1", 7002),
            ]),
        ]);
        let topology = Topology::from_slots(&answer).expect("a CLUSTER SLOTS answer");
        assert_eq!(topology.masters.len(), 2);
        assert_eq!(topology.nodes.len(), 3);
        assert!(topology.complete());
        assert_eq!(
            topology.owner(8192).map(Master::address).as_deref(),
            Some("127.0.0.1:7002")
        );
        let mut partial = topology.clone();
        partial.masters.pop();
        assert!(!partial.complete());
    }
}
