//! The master of a Sentinel set: asked of every sentinel at once (the
//! address most of those that answer name wins, so one sentinel that has
//! not heard of a failover yet is outvoted), checked with `ROLE` (a demoted
//! master is never used), and replaced when the sentinels name another.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{open_client, server_info, within, Direct};
use crate::broker::BrokerError;
use crate::config::{Credentials, RedisSettings};

pub struct SentinelSet {
    shared: Arc<Shared>,
}

/// What the subscription's watcher shares with the command side.
pub struct Shared {
    /// `host:port` and a client of each sentinel.
    sentinels: Vec<(String, redis::Client)>,
    master: String,
    db: i64,
    auth: Credentials,
    tls: bool,
    settings: RedisSettings,
    current: RwLock<Option<Arc<Direct>>>,
}

impl SentinelSet {
    pub fn new(
        settings: &RedisSettings,
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        auth: Credentials,
        tls: bool,
    ) -> Result<SentinelSet, BrokerError> {
        let sentinel_auth = Credentials {
            username: (!settings.sentinel_username.is_empty())
                .then(|| settings.sentinel_username.clone()),
            password: (!settings.sentinel_password.expose().is_empty())
                .then(|| settings.sentinel_password.expose().to_string()),
        };
        let mut clients = Vec::with_capacity(sentinels.len());
        for (host, port) in sentinels {
            let info = server_info(
                &host,
                port,
                &sentinel_auth,
                0,
                tls,
                redis::ProtocolVersion::RESP2,
            )?;
            let shown = format!("sentinel {host}:{port}");
            clients.push((
                format!("{host}:{port}"),
                open_client(settings, info, &shown)?,
            ));
        }
        Ok(SentinelSet {
            shared: Arc::new(Shared {
                sentinels: clients,
                master,
                db,
                auth,
                tls,
                settings: settings.clone(),
                current: RwLock::new(None),
            }),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The master commands go to; unavailable until one is resolved (and
    /// from a `+switch-master` until the next is).
    pub fn current(&self) -> Result<Arc<Direct>, BrokerError> {
        self.shared.current()
    }

    /// Finds the master, makes it the one commands go to (new connections
    /// if it moved), and checks that it is a master. Returns it and the
    /// sentinel to watch for switches.
    pub async fn resolve(
        &self,
        timeout: Duration,
    ) -> Result<(Arc<Direct>, redis::Client), BrokerError> {
        let shared = &self.shared;
        let ((host, port), watcher) = shared.ask(timeout).await?;
        let address = format!("{host}:{port}");
        let known = shared.current_if(&address);
        let direct = match known {
            Some(direct) => direct,
            None => {
                let info = server_info(
                    &host,
                    port,
                    &shared.auth,
                    shared.db,
                    shared.tls,
                    redis::ProtocolVersion::RESP2,
                )?;
                let shown = format!("master {} at {address}", shared.master);
                let client = open_client(&shared.settings, info, &shown)?;
                let direct = Arc::new(Direct::new(client, &shared.settings)?);
                tracing::info!(master = %shared.master, %address, "the sentinels name this master");
                direct
            }
        };
        check_role(&direct, timeout).await?;
        shared.set_current(Some(Arc::clone(&direct)));
        Ok((direct, watcher))
    }
}

impl Shared {
    pub fn master_name(&self) -> &str {
        &self.master
    }

    pub fn current(&self) -> Result<Arc<Direct>, BrokerError> {
        self.current
            .read()
            .ok()
            .and_then(|current| current.clone())
            .ok_or_else(|| {
                BrokerError::Unavailable(format!(
                    "no master of {:?} confirmed by the sentinels yet",
                    self.master
                ))
            })
    }

    fn current_if(&self, address: &str) -> Option<Arc<Direct>> {
        self.current().ok().filter(|d| d.address() == address)
    }

    fn set_current(&self, direct: Option<Arc<Direct>>) {
        if let Ok(mut current) = self.current.write() {
            *current = direct;
        }
    }

    /// Commands stop going to the master until the next `resolve`
    /// (the sentinels announced a switch).
    pub fn invalidate(&self) {
        self.set_current(None);
    }

    /// Asks every sentinel for the master's address at once; the address
    /// most answers name (the first sentinel's on a tie) and a client of a
    /// sentinel that named it.
    pub async fn ask(
        &self,
        timeout: Duration,
    ) -> Result<((String, u16), redis::Client), BrokerError> {
        let asks = self.sentinels.iter().map(|(address, client)| async move {
            let mut cmd = redis::cmd("SENTINEL");
            cmd.arg("get-master-addr-by-name").arg(&self.master);
            let answer = once::<Option<(String, u16)>>(client, &cmd, timeout).await;
            (address, client, answer)
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut votes: Vec<((String, u16), usize, &redis::Client)> = Vec::new();
        let mut errors = Vec::new();
        for (address, client, answer) in &answers {
            match answer {
                Ok(Some(master)) => match votes.iter_mut().find(|(m, _, _)| m == master) {
                    Some(vote) => vote.1 += 1,
                    None => votes.push((master.clone(), 1, client)),
                },
                Ok(None) => errors.push(format!("{address}: knows no master {:?}", self.master)),
                Err(error) => errors.push(format!("{address}: {error}")),
            }
        }
        let best = votes
            .iter()
            .enumerate()
            .max_by_key(|(i, (_, count, _))| (*count, std::cmp::Reverse(*i)))
            .map(|(_, vote)| vote);
        match best {
            Some((master, _, client)) => Ok((master.clone(), (*client).clone())),
            None => Err(BrokerError::Unavailable(format!(
                "no sentinel named the master {:?}: {}",
                self.master,
                errors.join("; ")
            ))),
        }
    }
}

/// One command on a connection of its own (a sentinel, or a server not yet
/// trusted with the pool's commands).
async fn once<T: redis::FromRedisValue>(
    client: &redis::Client,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<T, BrokerError> {
    within(timeout, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    })
    .await
}

/// `ROLE` says `master`: never subscribe to, or write through, a replica.
async fn check_role(direct: &Direct, timeout: Duration) -> Result<(), BrokerError> {
    let role = once::<Vec<redis::Value>>(direct.client(), &redis::cmd("ROLE"), timeout).await?;
    let name = role
        .first()
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .unwrap_or_default();
    if name == "master" {
        Ok(())
    } else {
        Err(BrokerError::Unavailable(format!(
            "{} is a {name}, not the master (a failover in progress?)",
            direct.address()
        )))
    }
}
