//! skywave-loadgen: plays browsers and the PHP publisher against a running
//! skywave (or wavelog_worker) node and prints the figures of BENCHMARKS.md,
//! each run ending with one `SUMMARY {json}` line.
//!
//! Loopback only, bounded in count and time: every scenario refuses
//! non-loopback targets and stops by itself.

mod failures;
mod floor;
mod measure;
mod proto;
mod scenario;
mod stamped;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use scenario::Target;

/// One process holds at most this many sockets (the hard limit of open files here is 20,000).
const MAX_SOCKETS: usize = 19_000;

#[derive(Parser)]
#[command(
    name = "skywave-loadgen",
    about = "Load generator for skywave (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// Public WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:9000")]
    ws: SocketAddr,
    /// Internal API listener.
    #[arg(long, default_value = "127.0.0.1:9001")]
    internal: SocketAddr,
    /// The server's worker_secret.
    #[arg(long, env = "SKYWAVE_WORKER_SECRET")]
    secret: String,
    /// The server's pid, for RSS and CPU figures.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// A fan-out load (the server's, or the floor's with the same shape).
#[derive(Args, Clone, Copy)]
struct LoadArgs {
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[command(flatten)]
    pace: PaceArgs,
}

/// How fast, how long and how big a load publishes (the fan-out's and the
/// cluster's).
#[derive(Args, Clone, Copy)]
struct PaceArgs {
    /// Publishes (the floor: bursts) per second, all topics together.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
}

/// [`LoadArgs`] within the generator's bounds.
#[derive(Clone, Copy)]
struct Load {
    sockets: usize,
    topics: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
}

impl LoadArgs {
    fn bounded(self) -> Result<Load> {
        Ok(Load {
            sockets: bounded(self.sockets)?,
            topics: self.topics,
            rate: self.pace.rate,
            duration: Duration::from_secs(self.pace.duration.min(600)),
            payload_bytes: self.pace.payload_bytes.min(512 * 1024),
        })
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Idle authenticated sockets: RSS per socket, connect+auth rate and latency.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 10)]
        topics: usize,
        /// Seconds to keep the sockets open after measuring.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// Fan-out: sockets over topics, one publisher at a rate; latency, completeness, CPU.
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Also run the floor with the same receivers, rate and frame size
        /// (floor first, then the server, `--rounds` times alternately) and
        /// print server CPU per delivery / floor.
        #[arg(long)]
        floor: bool,
        /// Floor/server pairs to run with `--floor`.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// CPUs for the floor's sender (`taskset -c` list): the server's own
        /// when the server is pinned, so both send from the same CPUs.
        #[arg(long)]
        floor_cpus: Option<String>,
    },
    /// The floor alone: the fan-out's receivers fed by a plain sender
    /// process, one non-blocking write(2) per socket per burst; its CPU per write.
    Floor {
        #[command(flatten)]
        load: LoadArgs,
        /// CPUs for the sender (`taskset -c` list).
        #[arg(long)]
        floor_cpus: Option<String>,
        /// Sender threads, each writing its share of every topic's sockets
        /// on the same schedule (1 to 8): the floor of a fan-out split
        /// across cores.
        #[arg(long, default_value_t = 1)]
        floor_threads: usize,
    },
    /// The floor's sender (started by `floor`; not for direct use).
    #[command(hide = true)]
    FloorSender {
        #[arg(long)]
        sockets: usize,
        #[arg(long)]
        topics: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long)]
        payload_bytes: usize,
        #[arg(long)]
        epoch_ns: u64,
        /// CPUs the sender thread is kept on (`taskset -c` list).
        #[arg(long)]
        cpus: Option<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Two nodes via Redis: sockets split across them, publishes to the first.
    Cluster {
        /// `WS,INTERNAL[,PID]` of a node; give it twice (the first gets the publishes).
        #[arg(long = "node", required = true, num_args = 1)]
        nodes: Vec<String>,
        #[arg(long, env = "SKYWAVE_WORKER_SECRET")]
        secret: String,
        #[arg(long, default_value_t = 5_000)]
        sockets_per_node: usize,
        #[command(flatten)]
        pace: PaceArgs,
    },
    /// Connect/auth/close cycles; RSS before and after.
    Churn {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 200_000)]
        cycles: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Many sockets close at once while new ones connect; new-connect latency.
    MassClose {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 2_000)]
        fresh: usize,
    },
    /// SIGTERM with sockets open: every socket should get 1001, exit within 10 s.
    Sigterm {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
    },
    /// Sockets that never read next to sockets that do, one topic: what the
    /// readers get, when the server closes the stuck ones.
    Stuck {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1_000)]
        stuck: usize,
        #[arg(long, default_value_t = 3)]
        readers: usize,
        #[arg(long, default_value_t = 2_000)]
        publishes: u64,
        #[arg(long, default_value_t = 10_000)]
        payload_bytes: usize,
        /// Publishes per second; 0 publishes back-to-back.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// A publish stream, then SIGTERM right after the last publish was
    /// answered 200: did every socket get every accepted publish before 1001?
    Drain {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 5_000)]
        sockets: usize,
        #[arg(long, default_value_t = 150)]
        publishes: u64,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Publishes per second; 0 publishes back-to-back.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Publishes to one topic back-to-back, as fast as accepted, every
    /// socket reading: is every loss reported by `lagged`, how fresh are the
    /// delivered frames, does RSS stay bounded.
    Overload {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 5_000)]
        publishes: u64,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
    },
    /// A few seconds of each scenario at small N against a server this
    /// command starts itself; exits non-zero unless every delivery arrived.
    Smoke {
        /// The skywave binary to start.
        #[arg(long, default_value = "target/release/skywave")]
        server_bin: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.scenario)) {
        Ok(summary) => {
            println!("SUMMARY {summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn raise_open_files_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

fn target(args: TargetArgs) -> Result<Target> {
    for addr in [args.ws, args.internal] {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address: this tool only loads this machine");
        }
    }
    Ok(Target {
        ws: args.ws,
        internal: args.internal,
        secret: args.secret,
        pid: args.server_pid,
    })
}

fn bounded(sockets: usize) -> Result<usize> {
    if sockets == 0 || sockets > MAX_SOCKETS {
        bail!("sockets must be 1..={MAX_SOCKETS} (one process may hold 20,000 open files)");
    }
    Ok(sockets)
}

async fn run(scenario: Scenario) -> Result<serde_json::Value> {
    // Every socket read from carries the kernel's receive stamps (see
    // `stamped`); they are on before the first socket opens.
    let _stamping = stamped::Stamping::on().await?;
    match scenario {
        Scenario::Idle {
            target: t,
            sockets,
            topics,
            hold,
        } => {
            scenario::idle(
                &target(t)?,
                bounded(sockets)?,
                topics,
                Duration::from_secs(hold.min(600)),
            )
            .await
        }
        Scenario::Fanout {
            target: t,
            load,
            floor,
            rounds,
            floor_cpus,
        } => {
            let target = target(t)?;
            let load = load.bounded()?;
            let floor_cpus = floor::SenderCpus::new(floor_cpus)?;
            if floor {
                compare(&target, load, rounds.clamp(1, 10), &floor_cpus).await
            } else {
                fanout(std::slice::from_ref(&target), load).await
            }
        }
        Scenario::Floor {
            load,
            floor_cpus,
            floor_threads,
        } => {
            let l = load.bounded()?;
            let cpus = floor::SenderCpus::new(floor_cpus)?;
            if !(1..=floor::MAX_THREADS).contains(&floor_threads) {
                bail!(
                    "--floor-threads {floor_threads}: from 1 to {}",
                    floor::MAX_THREADS
                );
            }
            Ok(floor::floor(l, &cpus, floor_threads).await?.0)
        }
        Scenario::FloorSender {
            sockets,
            topics,
            rate,
            duration_ms,
            payload_bytes,
            epoch_ns,
            cpus,
            threads,
        } => {
            let cpus = floor::SenderCpus::new(cpus)?;
            tokio::task::spawn_blocking(move || {
                cpus.pin_this_thread()?;
                floor::sender(
                    sockets,
                    topics,
                    rate,
                    Duration::from_millis(duration_ms.min(600_000)),
                    payload_bytes,
                    epoch_ns,
                    threads,
                )
            })
            .await?
        }
        Scenario::Cluster {
            nodes,
            secret,
            sockets_per_node,
            pace,
        } => {
            let targets = nodes
                .iter()
                .map(|node| node_target(node, &secret))
                .collect::<Result<Vec<_>>>()?;
            if targets.len() < 2 {
                bail!("cluster needs two --node");
            }
            let load = LoadArgs {
                sockets: sockets_per_node * targets.len(),
                topics: 1,
                pace,
            };
            fanout(&targets, load.bounded()?).await
        }
        Scenario::Churn {
            target: t,
            cycles,
            concurrency,
        } => {
            scenario::churn(
                &target(t)?,
                cycles.min(1_000_000),
                concurrency.clamp(1, 1024),
            )
            .await
        }
        Scenario::MassClose {
            target: t,
            sockets,
            fresh,
        } => {
            scenario::mass_close(
                &target(t)?,
                bounded(sockets)?,
                bounded(fresh.min(MAX_SOCKETS - sockets.min(MAX_SOCKETS - 1)))?,
            )
            .await
        }
        Scenario::Sigterm { target: t, sockets } => {
            scenario::sigterm(&target(t)?, bounded(sockets)?).await
        }
        Scenario::Stuck {
            target: t,
            stuck,
            readers,
            publishes,
            payload_bytes,
            rate,
        } => {
            failures::stuck(
                &target(t)?,
                bounded(stuck)?,
                bounded(readers)?,
                publishes.min(1_000_000),
                payload_bytes.min(512 * 1024),
                rate,
            )
            .await
        }
        Scenario::Drain {
            target: t,
            sockets,
            publishes,
            payload_bytes,
            rate,
        } => {
            failures::drain(
                &target(t)?,
                bounded(sockets)?,
                publishes.min(1_000_000),
                payload_bytes.min(512 * 1024),
                rate,
            )
            .await
        }
        Scenario::Overload {
            target: t,
            sockets,
            publishes,
            payload_bytes,
        } => {
            failures::overload(
                &target(t)?,
                bounded(sockets)?,
                publishes.min(1_000_000),
                payload_bytes.min(512 * 1024),
            )
            .await
        }
        Scenario::Smoke { server_bin } => smoke(&server_bin).await,
    }
}

/// Floor, then the server, `rounds` times, with the same receivers, rate
/// and frame size; prints server CPU per delivery / floor of each pair.
async fn compare(
    target: &Target,
    load: Load,
    rounds: usize,
    floor_cpus: &floor::SenderCpus,
) -> Result<serde_json::Value> {
    let Load {
        sockets,
        topics,
        rate,
        ..
    } = load;
    let mut pairs = Vec::new();
    let mut ratios = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=rounds {
        let (floor_json, floor) = floor::floor(load, floor_cpus, 1).await?;
        let server = fanout(std::slice::from_ref(target), load).await?;
        let node = &server["nodes"][0];
        let per_delivery = node["cpu_us_per_delivery"].as_f64();
        let p99 = node["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let arrival_p99 = node["arrival"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let ratio = per_delivery.map(|per| per / floor.cpu_us_per_write);
        let line = match (per_delivery, ratio) {
            (Some(per), Some(ratio)) => format!(
                "round {round}: server CPU per delivery / floor = {per:.2} µs / {:.2} µs = {ratio:.2}×; receive p99 {p99:.2} ms (floor {:.2} ms); arrival p99 {arrival_p99:.2} ms (floor {:.2} ms)",
                floor.cpu_us_per_write, floor.p99_ms, floor.arrival_p99_ms
            ),
            _ => format!(
                "round {round}: floor {:.2} µs per write; no server CPU figure (give --server-pid)",
                floor.cpu_us_per_write
            ),
        };
        println!("fanout {line}");
        lines.push(line);
        ratios.extend(ratio);
        pairs.push(serde_json::json!({"floor": floor_json, "server": server, "cpu_ratio": ratio}));
    }
    for line in &lines {
        println!("compare {line}");
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios.get(ratios.len() / 2).copied();
    if let Some(median) = median {
        println!(
            "compare: server CPU per delivery / floor over {rounds} round(s): median {median:.2}×"
        );
    }
    let floor_us: Vec<_> = pairs
        .iter()
        .map(|p| p["floor"]["cpu_us_per_write"].clone())
        .collect();
    let server_us: Vec<_> = pairs
        .iter()
        .map(|p| p["server"]["nodes"][0]["cpu_us_per_delivery"].clone())
        .collect();
    // One p99 of every round: `pick` finds the figure's object in a pair.
    let p99s = |pick: fn(&serde_json::Value) -> &serde_json::Value| -> Vec<serde_json::Value> {
        pairs.iter().map(|p| pick(p)["p99_ms"].clone()).collect()
    };
    let server_p99_ms = p99s(|p| &p["server"]["nodes"][0]["latency"]);
    let server_arrival_p99_ms = p99s(|p| &p["server"]["nodes"][0]["arrival"]);
    let floor_arrival_p99_ms = p99s(|p| &p["floor"]["arrival"]);
    let answered_p99_ms = p99s(|p| &p["server"]["publish_answered"]);
    let complete = pairs
        .iter()
        .all(|p| p["floor"]["complete"] == true && p["server"]["complete"] == true);
    Ok(serde_json::json!({
        "scenario": "compare", "sockets": sockets, "topics": topics, "rate": rate,
        "floor_us_per_write": floor_us, "server_us_per_delivery": server_us,
        "server_p99_ms": server_p99_ms, "server_arrival_p99_ms": server_arrival_p99_ms,
        "floor_arrival_p99_ms": floor_arrival_p99_ms, "publish_answered_p99_ms": answered_p99_ms,
        "complete": complete,
        "cpu_ratios": ratios, "median_cpu_ratio": median, "rounds": pairs,
    }))
}

/// The fan-out scenario: `load` over the sockets of every target.
async fn fanout(targets: &[Target], load: Load) -> Result<serde_json::Value> {
    scenario::fanout(
        targets,
        load.sockets,
        load.topics,
        load.rate,
        load.duration,
        load.payload_bytes,
    )
    .await
}

/// `WS,INTERNAL[,PID]` of a cluster node.
fn node_target(node: &str, secret: &str) -> Result<Target> {
    let parts: Vec<&str> = node.split(',').collect();
    let (ws, internal) = match parts.as_slice() {
        [ws, internal] | [ws, internal, _] => (ws.parse()?, internal.parse()?),
        _ => bail!("--node takes WS,INTERNAL[,PID], got {node}"),
    };
    let server_pid = parts.get(2).map(|p| p.parse()).transpose()?;
    target(TargetArgs {
        ws,
        internal,
        secret: secret.to_string(),
        server_pid,
    })
}

/// Starts a server on free loopback ports, runs every scenario briefly.
async fn smoke(server_bin: &str) -> Result<serde_json::Value> {
    let secret = "smoke-secret-0123456789abcdef0123456789abcdef";
    let (ws, internal) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("skywave-loadgen-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("ws_bind: 127.0.0.1\nws_port: {ws}\ninternal_port: {internal}\nworker_secret: \"{secret}\"\nlog_level: warn\n"),
    )?;
    let child = Command::new(server_bin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {server_bin}"))?;
    let server = KillOnDrop(child);
    let target = Target {
        ws: SocketAddr::from(([127, 0, 0, 1], ws)),
        internal: SocketAddr::from(([127, 0, 0, 1], internal)),
        secret: secret.to_string(),
        pid: Some(server.0.id()),
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(target.internal)
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(target.ws).await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let idle = scenario::idle(&target, 200, 4, Duration::ZERO).await?;
    // The floor, then the same fan-out through the server: both complete.
    // 100 sockets a topic: more than a publisher delivers inline
    // (`dispatch::INLINE_MAX`), so each publish goes to the fan-out task
    // after its answer, and order and completeness are checked on that path.
    let load = Load {
        sockets: 200,
        topics: 2,
        rate: 50.0,
        duration: Duration::from_secs(2),
        payload_bytes: 100,
    };
    // The floor's sender kept on one CPU (the first this process may use),
    // as `benches/floor_goals.sh` keeps it on the server's.
    let first_cpu = measure::allowed_cpus()?
        .split([',', '-'])
        .next()
        .unwrap_or("0")
        .to_string();
    let pinned = floor::SenderCpus::new(Some(first_cpu.clone()))?;
    let compared = compare(&target, load, 1, &pinned).await?;
    let floor = compared["rounds"][0]["floor"].clone();
    let fanout = compared["rounds"][0]["server"].clone();
    if floor["complete"] != true {
        bail!("smoke: the floor sender's frames did not all arrive in order: {floor}");
    }
    if floor["sender_cpus"] != first_cpu.as_str() {
        bail!("smoke: the floor sender was to be kept on CPU {first_cpu}: {floor}");
    }
    // The floor split across two sender threads: every frame still
    // arrives, in order, and both threads wrote.
    let (split, _) = floor::floor(load, &floor::SenderCpus::default(), 2).await?;
    if split["complete"] != true || split["threads"] != 2 {
        bail!("smoke: the two-thread floor's frames did not all arrive in order: {split}");
    }
    // The overload policy: every frame a socket did not get is reported.
    let overload = failures::overload(&target, 200, 4_000, 1_000).await?;
    if overload["all_accounted"] != true || overload["arrival"]["n"] != overload["pushes"] {
        bail!(
            "smoke: under overload a socket lost frames no lagged notice reported, or a push carried no arrival stamp: {overload}"
        );
    }
    let churn = scenario::churn(&target, 500, 16).await?;
    let mass_close = scenario::mass_close(&target, 300, 100).await?;
    // Last: it ends the server.
    let sigterm = scenario::sigterm(&target, 100).await?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    if fanout["complete"] != true {
        bail!("smoke: not every delivery arrived in order: {fanout}");
    }
    // Every delivery carried the kernel's arrival stamp, and no arrival is
    // later than its read (each frame's is at or before it, so every
    // percentile is too).
    for (name, side) in [("floor", &floor), ("fanout", &fanout["nodes"][0])] {
        let stamped = side["arrival"]["n"] == side["deliveries"];
        let before_read = ["p50_ms", "p99_ms", "max_ms"].iter().all(|key| {
            let (arrival, read) = (side["arrival"][key].as_f64(), side["latency"][key].as_f64());
            matches!((arrival, read), (Some(a), Some(r)) if a <= r)
        });
        if !stamped || !before_read {
            bail!("smoke: the {name}'s arrival stamps are missing or after the reads: {side}");
        }
    }
    if fanout["publish_answered"]["n"] != fanout["published"] {
        bail!("smoke: not every publish answer carried its arrival stamp: {fanout}");
    }
    if churn["failed"] != 0 {
        bail!("smoke: churn cycles failed: {churn}");
    }
    if sigterm["going_away"] != 100 || sigterm["exit_s"].is_null() {
        bail!("smoke: SIGTERM did not close every socket with 1001 and exit: {sigterm}");
    }
    println!("smoke: every scenario ran, every delivery arrived in order");
    Ok(serde_json::json!({
        "scenario": "smoke", "idle": idle, "floor": floor, "split_floor": split, "fanout": fanout,
        "cpu_ratio": compared["median_cpu_ratio"], "overload": overload, "churn": churn,
        "mass_close": mass_close, "sigterm": sigterm,
    }))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
