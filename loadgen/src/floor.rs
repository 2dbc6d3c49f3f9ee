//! The floor: what this kernel charges for a fan-out when the sender does
//! nothing but one non-blocking `write(2)` per socket per burst.
//!
//! The receivers are the fan-out scenario's own (`scenario::receive`, same
//! runtime, same parsing, same source addresses), but they connect to a
//! child process of this binary (`floor-sender`, hidden), whose plain sender
//! thread (no skywave, no runtime) writes to them: per burst one WebSocket text frame of the same
//! bytes skywave's push frame has (`{"type":"push","payload":{"seq":…,"t":…,
//! "pad":…}}`), the same buffer to every socket of the burst's topic, at the
//! same rate, round-robin over the topics as the publisher is. Its sockets
//! get the same options as skywave's public ones (no Nagle, 64 KiB not yet
//! sent). The figure is the sender thread's own CPU time per write
//! (`getrusage(RUSAGE_THREAD)`, user + system): on loopback that includes
//! the receiver's TCP work and its wake-up, as skywave's CPU does.
//!
//! A write the socket does not take whole (rare at these rates) keeps the
//! rest, which goes out at the front of that socket's next write: still one
//! `write(2)` per socket per burst, and every receiver's stream stays whole.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::measure::{thread_usage, Percentiles, Usage};
use crate::proto::{connect, Browser};
use crate::scenario::{receive, Finish, Received};
use crate::stamped::{monotonic_ns, Epoch};

/// The most sender threads a floor takes (`--floor-threads`).
pub const MAX_THREADS: usize = 8;

/// What the socket of skywave's public listener is given (`ws::UNSENT_LIMIT`).
const UNSENT_LIMIT: u32 = 64 * 1024;

/// Where the floor's sender runs: anywhere (the kernel's choice), or on
/// the CPUs of a list, e.g. the ones the server is pinned to, so that the
/// sender and the server share the receivers' placement, not one of them
/// the receivers' CPU.
#[derive(Debug, Clone, Default)]
pub struct SenderCpus(Option<String>);

impl SenderCpus {
    /// Checks a `taskset -c` list (none: anywhere).
    pub fn new(list: Option<String>) -> Result<Self> {
        if let Some(list) = &list {
            crate::measure::parse_cpus(list).context("--floor-cpus")?;
        }
        Ok(SenderCpus(list))
    }

    /// Keeps the calling thread on the list's CPUs (no list: nothing).
    pub fn pin_this_thread(&self) -> Result<()> {
        let Some(list) = &self.0 else {
            return Ok(());
        };
        crate::measure::pin_thread(&crate::measure::parse_cpus(list)?).with_context(|| {
            format!(
                "--floor-cpus {list}: not CPUs this process may use ({})",
                crate::measure::allowed_cpus().unwrap_or_default()
            )
        })
    }
}

/// One floor run's figures.
#[derive(Debug, Clone, Copy)]
pub struct FloorFigures {
    pub cpu_us_per_write: f64,
    pub p99_ms: f64,
    /// The same to the frames' arrival in the receivers' sockets.
    pub arrival_p99_ms: f64,
}

/// `sockets` receivers over `topic_count` topics, `rate` bursts per second
/// for `duration`, frames the size of a push of `payload_bytes`. The sender
/// is a child process (this binary's hidden `floor-sender`): one process
/// may hold 20,000 open files, and the sender's sockets are as many again
/// as the receivers'; it is also a process of its own, as a server is.
///
/// `threads` > 1 splits every topic's sockets into that many contiguous
/// shares, each written by a sender thread of its own on the same burst
/// schedule (the parallel floor a fan-out split across cores would face);
/// the CPU per write is then all the threads' CPU over all their writes.
pub async fn floor(
    load: crate::Load,
    cpus: &SenderCpus,
    threads: usize,
) -> Result<(Value, FloorFigures)> {
    let crate::Load {
        sockets,
        topics: topic_count,
        rate,
        duration,
        payload_bytes,
    } = load;
    let topic_count = topic_count.clamp(1, sockets.max(1));
    let epoch = Epoch::now()?;
    let mut args = vec![
        "floor-sender".to_string(),
        format!("--sockets={sockets}"),
        format!("--topics={topic_count}"),
        format!("--rate={rate}"),
        format!("--duration-ms={}", duration.as_millis()),
        format!("--payload-bytes={payload_bytes}"),
        format!("--epoch-ns={}", epoch.ns),
        format!("--threads={threads}"),
    ];
    if let Some(list) = &cpus.0 {
        args.push(format!("--cpus={list}"));
    }
    let mut child = Command::new(std::env::current_exe().context("current_exe")?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the floor sender")?;
    let mut stdin = child.stdin.take().context("sender stdin")?;
    let stdout = child.stdout.take().context("sender stdout")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let result = async {
        let addr: SocketAddr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
                .await
                .context("floor sender: no LISTEN line")?
                .context("floor sender ended before listening")?;
            if let Some(addr) = line.strip_prefix("LISTEN ") {
                break addr.parse()?;
            }
        };
        let finish: Finish = Arc::new(std::sync::OnceLock::new());
        let mut tasks = JoinSet::new();
        for (k, browser) in open_receivers(addr, sockets, topic_count).await? {
            tasks.spawn(receive(browser, 0, k, epoch, Arc::clone(&finish)));
        }
        stdin.write_all(b"GO\n")?;
        stdin.flush()?;
        let limit = duration + Duration::from_secs(90);
        let summary: Value = loop {
            let line = tokio::time::timeout(limit, lines.recv())
                .await
                .context("floor sender: no SUMMARY")?
                .context("floor sender ended without a SUMMARY")?;
            if let Some(json) = line.strip_prefix("SUMMARY ") {
                break serde_json::from_str(json)?;
            }
        };
        let per_topic: Vec<u64> = summary["per_topic"]
            .as_array()
            .context("per_topic")?
            .iter()
            .map(|n| n.as_u64().unwrap_or(0))
            .collect();
        let _ = finish.set((per_topic.clone(), Instant::now() + Duration::from_secs(5)));
        let mut results: Vec<Received> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok((received, browser)) = joined {
                results.push(received);
                drop(browser);
            }
        }
        Ok::<_, anyhow::Error>(report(
            sockets,
            topic_count,
            rate,
            &summary,
            &per_topic,
            results,
        ))
    }
    .await;
    // The sender exits when its stdin closes.
    drop(stdin);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
    })
    .await;
    result
}

/// Opens `count` plain TCP connections to the floor sender (from the
/// rotating source addresses the fan-out uses); each first says its topic.
async fn open_receivers(
    addr: SocketAddr,
    count: usize,
    topics: usize,
) -> Result<Vec<(usize, Browser)>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let limit = Arc::clone(&limit);
        let k = i % topics;
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let mut stream = tokio::time::timeout(Duration::from_secs(30), connect(addr))
                .await
                .context("connect deadline")??;
            stream.write_all(&(k as u32).to_le_bytes()).await?;
            Ok::<_, anyhow::Error>((k, Browser::raw(stream)?))
        });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        open.push(joined??);
    }
    Ok(open)
}

/// The child side (`floor-sender`): listens, takes `sockets` connections
/// (each says its topic), waits for `GO` on stdin, sends, prints its
/// figures, and exits once stdin closes.
pub fn sender(
    sockets: usize,
    topics: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    epoch_ns: u64,
    threads: usize,
) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind the floor listener")?;
    println!("LISTEN {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut groups: Vec<Vec<Outlet>> = (0..topics.max(1)).map(|_| Vec::new()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    listener.set_nonblocking(true)?;
    let mut accepted = 0;
    while accepted < sockets {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("floor: only {accepted} of {sockets} receivers connected");
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut topic = [0u8; 4];
        stream.read_exact(&mut topic)?;
        let k = u32::from_le_bytes(topic) as usize;
        stream.set_nodelay(true)?;
        socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LIMIT)?;
        stream.set_nonblocking(true)?;
        groups
            .get_mut(k)
            .context("a receiver named a topic out of range")?
            .push(Outlet {
                stream,
                rest: Vec::new(),
            });
        accepted += 1;
    }
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let plan = Plan {
        rate,
        duration,
        payload_bytes,
        epoch_ns,
    };
    let threads = threads.clamp(1, MAX_THREADS);
    let sent = plan.run(groups, threads)?;
    let summary = json!({
        "per_topic": sent.per_topic, "writes": sent.writes, "short_writes": sent.short_writes,
        "would_block": sent.would_block, "frame_bytes": sent.frame_bytes,
        "elapsed_s": sent.elapsed.as_secs_f64(),
        "user_s": sent.usage.user.as_secs_f64(), "system_s": sent.usage.system.as_secs_f64(),
        "voluntary_switches": sent.usage.voluntary_switches,
        "involuntary_switches": sent.usage.involuntary_switches,
        "sender_cpus": crate::measure::allowed_cpus().unwrap_or_default(),
        "threads": threads,
    });
    // Keep the sockets open until the parent has read everything.
    let outlets = sent.outlets;
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::stdin().read_to_string(&mut rest);
        drop(outlets);
        std::process::exit(0);
    });
    Ok(summary)
}

/// One sender socket and what it did not take of its last write.
struct Outlet {
    stream: TcpStream,
    rest: Vec<u8>,
}

/// The burst schedule every sender thread follows.
#[derive(Clone, Copy)]
struct Plan {
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    epoch_ns: u64,
}

struct Sent {
    per_topic: Vec<u64>,
    writes: u64,
    short_writes: u64,
    would_block: u64,
    usage: Usage,
    elapsed: Duration,
    frame_bytes: usize,
    outlets: Vec<Vec<Outlet>>,
}

impl Sent {
    /// Two threads' shares of the same bursts, added up.
    fn merge(mut self, other: Sent) -> Result<Sent> {
        if self.per_topic != other.per_topic {
            bail!("floor: the sender threads sent different bursts");
        }
        self.writes += other.writes;
        self.short_writes += other.short_writes;
        self.would_block += other.would_block;
        self.usage = self.usage.plus(other.usage);
        self.elapsed = self.elapsed.max(other.elapsed);
        for (mine, theirs) in self.outlets.iter_mut().zip(other.outlets) {
            mine.extend(theirs);
        }
        Ok(self)
    }
}

impl Plan {
    /// Splits every topic's outlets into `threads` contiguous shares and
    /// sends each share from a thread of its own (this one the first;
    /// the others inherit its CPU list), then adds their figures up.
    fn run(self, groups: Vec<Vec<Outlet>>, threads: usize) -> Result<Sent> {
        let mut shares: Vec<Vec<Vec<Outlet>>> = (0..threads).map(|_| Vec::new()).collect();
        for group in groups {
            let len = group.len();
            let mut outlets = group.into_iter();
            for (j, share) in shares.iter_mut().enumerate() {
                let take = (j + 1) * len / threads - j * len / threads;
                share.push(outlets.by_ref().take(take).collect());
            }
        }
        let mut shares = shares.into_iter();
        let first = shares.next().unwrap_or_default();
        let parts: Vec<Result<Sent>> =
            std::thread::scope(|scope| {
                let others: Vec<_> = shares
                    .map(|share| scope.spawn(move || self.send(share)))
                    .collect();
                let mut parts = vec![self.send(first)];
                for other in others {
                    parts.push(other.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("a floor sender thread panicked"))
                    }));
                }
                parts
            });
        let mut parts = parts.into_iter();
        let first = parts.next().context("floor: no sender thread")??;
        parts.try_fold(first, |sum, part| sum.merge(part?))
    }

    /// One thread's share: `duration × rate + 1` bursts on the schedule,
    /// one write per socket of the burst's topic.
    fn send(self, mut groups: Vec<Vec<Outlet>>) -> Result<Sent> {
        let pad = "x".repeat(self.payload_bytes.saturating_sub(40));
        let rate = self.rate.max(0.1);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let bursts = (self.duration.as_secs_f64() * rate).floor() as usize + 1;
        let mut per_topic = vec![0u64; groups.len()];
        let (mut writes, mut short_writes, mut would_block) = (0u64, 0u64, 0u64);
        let mut frame = Vec::with_capacity(self.payload_bytes + 64);
        let mut frame_bytes = 0;
        let before = thread_usage()?;
        let started = Instant::now();
        let mut next = started;
        for i in 0..bursts {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += interval;
            let k = i % groups.len().max(1);
            let Some(group) = groups.get_mut(k) else {
                break;
            };
            let seq = per_topic[k];
            let t = monotonic_ns()?.saturating_sub(self.epoch_ns);
            let text =
                format!(r#"{{"type":"push","payload":{{"seq":{seq},"t":{t},"pad":"{pad}"}}}}"#);
            text_frame(&mut frame, text.as_bytes());
            frame_bytes = frame.len();
            for outlet in group.iter_mut() {
                writes += 1;
                let result = if outlet.rest.is_empty() {
                    outlet.stream.write(&frame)
                } else {
                    outlet.rest.extend_from_slice(&frame);
                    outlet.stream.write(&outlet.rest)
                };
                let whole = if outlet.rest.is_empty() {
                    frame.len()
                } else {
                    outlet.rest.len()
                };
                match result {
                    Ok(n) if n == whole => outlet.rest.clear(),
                    Ok(n) => {
                        short_writes += 1;
                        if outlet.rest.is_empty() {
                            outlet.rest.extend_from_slice(&frame[n..]);
                        } else {
                            outlet.rest.drain(..n);
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        would_block += 1;
                        if outlet.rest.is_empty() {
                            outlet.rest.extend_from_slice(&frame);
                        }
                    }
                    Err(error) => return Err(error).context("floor write"),
                }
            }
            per_topic[k] += 1;
        }
        let usage = thread_usage()?.since(before);
        let elapsed = started.elapsed();
        // Whatever a socket did not take goes out now (blocking, bounded):
        // not counted, the receivers only need their streams whole.
        for outlet in groups.iter_mut().flatten() {
            if !outlet.rest.is_empty() {
                outlet.stream.set_nonblocking(false)?;
                outlet
                    .stream
                    .set_write_timeout(Some(Duration::from_secs(5)))?;
                let _ = outlet.stream.write_all(&outlet.rest);
            }
        }
        Ok(Sent {
            per_topic,
            writes,
            short_writes,
            would_block,
            usage,
            elapsed,
            frame_bytes,
            outlets: groups,
        })
    }
}

/// An unmasked server text frame (FIN set) around `payload`.
fn text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.clear();
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn report(
    sockets: usize,
    topics: usize,
    rate: f64,
    sent: &Value,
    per_topic: &[u64],
    results: Vec<Received>,
) -> (Value, FloorFigures) {
    let bursts: u64 = per_topic.iter().sum();
    let mut latencies = Vec::new();
    let mut arrivals = Vec::new();
    let (mut delivered, mut want, mut out_of_order) = (0u64, 0u64, 0u64);
    for r in &results {
        delivered += r.got.count;
        want += per_topic[r.topic];
        out_of_order += r.got.out_of_order;
        latencies.extend_from_slice(&r.got.latencies_us);
        arrivals.extend_from_slice(&r.got.arrivals_us);
    }
    let missing_receivers = sockets.saturating_sub(results.len());
    let complete = missing_receivers == 0 && delivered == want && out_of_order == 0;
    let latency = Percentiles::of(&mut latencies);
    let arrival = Percentiles::of(&mut arrivals);
    let number = |key: &str| sent[key].as_f64().unwrap_or(0.0);
    let writes = sent["writes"].as_u64().unwrap_or(0);
    let (user_us, system_us) = (number("user_s") * 1e6, number("system_s") * 1e6);
    let per = |us: f64| us / writes.max(1) as f64;
    let figures = FloorFigures {
        cpu_us_per_write: per(user_us + system_us),
        p99_ms: latency.p99 / 1000.0,
        arrival_p99_ms: arrival.p99 / 1000.0,
    };
    let elapsed = number("elapsed_s");
    println!(
        "floor: {sockets} sockets over {topics} topics, {bursts} bursts in {elapsed:.1} s ({:.1}/s, target {rate}/s) of {} B frames: {writes} write(2)s, {} short, {} would block",
        bursts as f64 / elapsed.max(1e-9),
        sent["frame_bytes"],
        sent["short_writes"],
        sent["would_block"]
    );
    println!(
        "floor: sender CPU ({} thread(s)) {:.3} s = {:.2} µs per write (user {:.2}, system {:.2}); {} voluntary + {} involuntary context switches; on CPUs {}",
        sent["threads"],
        (user_us + system_us) / 1e6,
        figures.cpu_us_per_write,
        per(user_us),
        per(system_us),
        sent["voluntary_switches"],
        sent["involuntary_switches"],
        sent["sender_cpus"].as_str().unwrap_or("?")
    );
    println!(
        "floor: {delivered}/{want} deliveries, {out_of_order} out of order; write->receive latency {}",
        latency.ms()
    );
    println!(
        "floor: write->arrival (in the receiver's socket) latency {}",
        arrival.ms()
    );
    let summary = json!({
        "scenario": "floor", "sockets": sockets, "topics": topics, "bursts": bursts,
        "frame_bytes": sent["frame_bytes"], "writes": writes,
        "short_writes": sent["short_writes"], "would_block": sent["would_block"],
        "cpu_us_per_write": figures.cpu_us_per_write,
        "user_us_per_write": per(user_us), "sys_us_per_write": per(system_us),
        "deliveries": delivered, "expected": want, "out_of_order": out_of_order,
        "latency": latency.json(), "arrival": arrival.json(), "complete": complete,
        "sender_cpus": sent["sender_cpus"], "threads": sent["threads"],
    });
    (summary, figures)
}
