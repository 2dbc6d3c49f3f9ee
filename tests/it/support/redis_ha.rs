//! Real Redis high-availability set-ups on loopback, killed on drop: a
//! Sentinel set (a master, a replica, three `redis-sentinel`s) and a Redis
//! Cluster (masters and replicas formed with `redis-cli --cluster create`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use super::{free_port, TlsFiles};

/// One `redis-server` (or `redis-sentinel`) process with fixed arguments.
pub struct Proc {
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    pub fn new(program: &'static str, port: u16, args: Vec<String>) -> Proc {
        let mut proc = Proc {
            port,
            program,
            args,
            child: None,
        };
        proc.start();
        proc
    }

    /// Starts (again) with the same arguments; waits until the port answers.
    pub fn start(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed for the Sentinel and Cluster tests \
                     (scripts/test installs it): {e}",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} on {} did not start",
                self.program,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A server of a set on `port`, its files (a replica's full sync writes an
/// RDB file even with `--save ""`; a cluster node its config) in `dir`, the
/// test's own directory, not the working directory of the test run.
fn redis_args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    args
}

/// One command to `127.0.0.1:port`, answered within 2 s.
pub async fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    ask_client(&client, cmd).await
}

/// One command on a connection of its own of `client`, answered within 2 s.
async fn ask_client<T: redis::FromRedisValue>(
    client: &redis::Client,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let run = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
}

/// Polls `check` every `every` until it answers `Ok`, for at most
/// `within`; then fails with `what` and the last answer.
pub async fn eventually<F, Fut>(within: Duration, every: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}: {last}"
        );
        tokio::time::sleep(every).await;
    }
}

pub const MASTER_NAME: &str = "mymaster";

/// How a Sentinel set is protected: TLS everywhere (certificates from a
/// throw-away CA), a password on the master and replica, a password on the
/// sentinels.
#[derive(Default)]
pub struct Secured {
    pub tls: Option<TlsFiles>,
    pub master_password: Option<String>,
    pub sentinel_password: Option<String>,
}

impl Secured {
    /// `redis-server` arguments for TLS only and the password.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(tls) = &self.tls {
            args.extend([
                "--port".to_string(),
                "0".to_string(),
                "--tls-port".to_string(),
                port.to_string(),
                "--tls-replication".to_string(),
                "yes".to_string(),
                "--tls-auth-clients".to_string(),
                "no".to_string(),
                "--tls-cert-file".to_string(),
                tls.cert.display().to_string(),
                "--tls-key-file".to_string(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".to_string(),
                tls.ca.display().to_string(),
            ]);
        }
        if let Some(password) = &self.master_password {
            args.extend([
                "--requirepass".to_string(),
                password.clone(),
                "--masterauth".to_string(),
                password.clone(),
            ]);
        }
        args
    }

    /// The lines of a sentinel's config for TLS and the passwords.
    fn sentinel_conf(&self, port: u16) -> String {
        let mut conf = String::new();
        match &self.tls {
            Some(tls) => conf.push_str(&format!(
                "port 0\ntls-port {port}\ntls-replication yes\ntls-auth-clients no\n\
                 tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            )),
            None => conf.push_str(&format!("port {port}\n")),
        }
        if let Some(password) = &self.sentinel_password {
            conf.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        conf
    }

    /// A client of `127.0.0.1:port` (a sentinel or a data server).
    fn client(&self, port: u16, sentinel: bool) -> redis::RedisResult<redis::Client> {
        skywave::broker::install_crypto_provider();
        let password = if sentinel {
            &self.sentinel_password
        } else {
            &self.master_password
        };
        let auth = password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        match &self.tls {
            Some(tls) => redis::Client::build_with_tls(
                format!("rediss://{auth}127.0.0.1:{port}/"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca).expect("CA file")),
                },
            ),
            None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")),
        }
    }

    async fn ask<T: redis::FromRedisValue>(
        &self,
        port: u16,
        sentinel: bool,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        ask_client(&self.client(port, sentinel)?, cmd).await
    }
}

/// A master, a replica and three sentinels (quorum 2, the master down
/// after 1 s without answers).
pub struct SentinelSet {
    pub servers: Vec<Proc>,
    pub sentinels: Vec<Proc>,
    pub secured: Secured,
    _dir: PathBuf,
}

impl SentinelSet {
    pub async fn start(dir: &Path) -> SentinelSet {
        SentinelSet::start_secured(dir, Secured::default()).await
    }

    pub async fn start_secured(dir: &Path, secured: Secured) -> SentinelSet {
        std::fs::create_dir_all(dir).expect("sentinel dir");
        let ports = distinct_ports(5);
        let (master_port, replica_port) = (ports[0], ports[1]);
        let master = Proc::new(
            "redis-server",
            master_port,
            redis_args(master_port, dir, &secured.server_args(master_port)),
        );
        let mut replica_args = secured.server_args(replica_port);
        replica_args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master_port.to_string(),
        ]);
        let replica = Proc::new(
            "redis-server",
            replica_port,
            redis_args(replica_port, dir, &replica_args),
        );
        let mut sentinels = Vec::new();
        for (i, port) in ports[2..].iter().copied().enumerate() {
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "{}bind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     {}\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    secured.sentinel_conf(port),
                    secured
                        .master_password
                        .as_ref()
                        .map(|p| format!("sentinel auth-pass {MASTER_NAME} {p}\n"))
                        .unwrap_or_default(),
                    dir = dir.display()
                ),
            )
            .expect("sentinel conf");
            sentinels.push(Proc::new(
                "redis-sentinel",
                port,
                vec![conf.display().to_string()],
            ));
        }
        let set = SentinelSet {
            servers: vec![master, replica],
            sentinels,
            secured,
            _dir: dir.to_path_buf(),
        };
        set.wait_ready().await;
        set
    }

    /// The URL a node is configured with.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let scheme = if self.secured.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        let auth = self
            .secured
            .master_password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}{}/{MASTER_NAME}/0", hosts.join(","))
    }

    /// A command to the sentinel or data server on `port`, with this set's
    /// TLS and passwords.
    pub async fn ask<T: redis::FromRedisValue>(
        &self,
        port: u16,
        sentinel: bool,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        self.secured.ask(port, sentinel, cmd).await
    }

    /// The master's port as the first sentinel that answers names it.
    pub async fn master_port(&self) -> Option<u16> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(MASTER_NAME);
        for sentinel in self.sentinels.iter().filter(|s| s.running()) {
            if let Ok(Some((_, port))) = self
                .ask::<Option<(String, u16)>>(sentinel.port, true, &cmd)
                .await
            {
                return Some(port);
            }
        }
        None
    }

    /// Until the replica is in sync and every sentinel knows it and the
    /// other sentinels (a failover needs both).
    async fn wait_ready(&self) {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the Sentinel set settles",
            || async {
                for sentinel in &self.sentinels {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg("replicas").arg(MASTER_NAME);
                    let replicas: Vec<Vec<String>> = self
                        .ask(sentinel.port, true, &cmd)
                        .await
                        .unwrap_or_default();
                    let synced = replicas.iter().any(|r| {
                        r.windows(2)
                            .any(|kv| kv[0] == "master-link-status" && kv[1] == "ok")
                    });
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg("sentinels").arg(MASTER_NAME);
                    let others: Vec<redis::Value> = self
                        .ask(sentinel.port, true, &cmd)
                        .await
                        .unwrap_or_default();
                    if !(synced && others.len() == 2) {
                        return Err(format!(
                            "sentinel {}: replica synced {synced}, {} other sentinels",
                            sentinel.port,
                            others.len()
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// `SENTINEL FAILOVER`, then waits until the sentinels name the other
    /// server; returns when they did.
    pub async fn failover(&self) -> Instant {
        let before = self.master_port().await.expect("a master");
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("FAILOVER").arg(MASTER_NAME);
        let _: () = self
            .ask(self.sentinels[0].port, true, &cmd)
            .await
            .expect("SENTINEL FAILOVER");
        self.wait_switch(before, Duration::from_secs(20)).await
    }

    /// SIGKILL of the master; returns the moment of the kill.
    pub async fn kill_master(&mut self) -> (Instant, u16) {
        let port = self.master_port().await.expect("a master");
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("the master is one of ours");
        server.kill9();
        (Instant::now(), port)
    }

    /// Until the sentinels name a master other than `before`.
    pub async fn wait_switch(&self, before: u16, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.master_port().await {
                if port != before {
                    return Instant::now();
                }
            }
            assert!(Instant::now() < deadline, "no failover within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A port `p` free with `p + 10000` (its cluster bus) free too: from
/// 10000..16000, so both are below the kernel's ephemeral range and above
/// `free_port`'s 2000..10000 (no other test can be handed one of them).
fn cluster_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    super::unused_port(&NEXT, 10000, 6000, |port| super::bindable(port + 10000))
}

/// `n` different free ports.
fn distinct_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each
/// (node timeout 2 s).
pub struct RedisCluster {
    pub nodes: Vec<Proc>,
    _dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(dir: &Path, masters: usize, replicas: usize) -> RedisCluster {
        std::fs::create_dir_all(dir).expect("cluster dir");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = cluster_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            nodes.push(Proc::new(
                "redis-server",
                port,
                redis_args(
                    port,
                    dir,
                    &[
                        "--cluster-enabled".to_string(),
                        "yes".to_string(),
                        "--cluster-config-file".to_string(),
                        conf.display().to_string(),
                        "--cluster-node-timeout".to_string(),
                        "2000".to_string(),
                        // A replica always stands for election (test
                        // clusters are young), and syncs at once.
                        "--cluster-replica-validity-factor".to_string(),
                        "0".to_string(),
                        "--repl-diskless-sync-delay".to_string(),
                        "0".to_string(),
                    ],
                ),
            ));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (scripts/test installs redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            _dir: dir.to_path_buf(),
        };
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster.wait_replicas_synced(Duration::from_secs(30)).await;
        cluster
    }

    /// Until every replica's link to its master is up.
    async fn wait_replicas_synced(&self, within: Duration) {
        eventually(
            within,
            Duration::from_millis(50),
            "every replica in sync",
            || async {
                for node in &self.nodes {
                    let info: String = ask(node.port, redis::cmd("INFO").arg("replication"))
                        .await
                        .unwrap_or_default();
                    if !(info.contains("role:master") || info.contains("master_link_status:up")) {
                        return Err(format!("replica {} not in sync", node.port));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    pub fn url(&self) -> String {
        // Two seeds: any one of them is enough to find the rest.
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// Until every running node says `cluster_state:ok` and sees every
    /// slot served.
    pub async fn wait_ok(&self, within: Duration) {
        eventually(
            within,
            Duration::from_millis(100),
            "the Redis Cluster ok",
            || async {
                for node in self.nodes.iter().filter(|n| n.running()) {
                    let info: String = ask(node.port, redis::cmd("CLUSTER").arg("INFO"))
                        .await
                        .unwrap_or_default();
                    if !(info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384"))
                    {
                        return Err(format!("node {} not ok", node.port));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// The ports of the masters, as a running node sees them.
    pub async fn masters(&self) -> Vec<u16> {
        for node in self.nodes.iter().filter(|n| n.running()) {
            let slots: redis::RedisResult<Vec<Vec<redis::Value>>> =
                ask(node.port, redis::cmd("CLUSTER").arg("SLOTS")).await;
            if let Ok(slots) = slots {
                let mut ports: Vec<u16> = slots
                    .iter()
                    .filter_map(|range| range.get(2))
                    .filter_map(|master| {
                        let fields =
                            redis::from_redis_value_ref::<Vec<redis::Value>>(master).ok()?;
                        redis::from_redis_value_ref::<u16>(fields.get(1)?).ok()
                    })
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                return ports;
            }
        }
        Vec::new()
    }

    /// The port of the master that owns `slot`.
    pub async fn owner(&self, slot: u16) -> Option<u16> {
        for node in self.nodes.iter().filter(|n| n.running()) {
            let slots: redis::RedisResult<Vec<Vec<redis::Value>>> =
                ask(node.port, redis::cmd("CLUSTER").arg("SLOTS")).await;
            if let Ok(slots) = slots {
                return slots.iter().find_map(|range| {
                    let start: u16 = redis::from_redis_value_ref(range.first()?).ok()?;
                    let end: u16 = redis::from_redis_value_ref(range.get(1)?).ok()?;
                    if !(start..=end).contains(&slot) {
                        return None;
                    }
                    let master =
                        redis::from_redis_value_ref::<Vec<redis::Value>>(range.get(2)?).ok()?;
                    redis::from_redis_value_ref::<u16>(master.get(1)?).ok()
                });
            }
        }
        None
    }

    /// Moves `slot` (and its keys) from the master on `from` to the one on
    /// `to`, as `redis-cli --cluster reshard` does for each slot.
    pub async fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let id = |port: u16| async move {
            ask::<String>(port, redis::cmd("CLUSTER").arg("MYID"))
                .await
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let setslot = |port: u16, args: Vec<String>| async move {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(&args);
            let _: () = ask(port, &cmd).await.expect("CLUSTER SETSLOT");
        };
        setslot(to, vec!["IMPORTING".into(), from_id.clone()]).await;
        setslot(from, vec!["MIGRATING".into(), to_id.clone()]).await;
        loop {
            let keys: Vec<String> = ask(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .await
            .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            let _: redis::Value = ask(from, &migrate).await.expect("MIGRATE");
        }
        for node in self.nodes.iter().filter(|n| n.running()) {
            setslot(node.port, vec!["NODE".into(), to_id.clone()]).await;
        }
    }

    /// SIGKILL of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill9();
        }
    }
}
