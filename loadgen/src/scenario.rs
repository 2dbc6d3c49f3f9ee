//! The load scenarios. Each is bounded in count and time and prints its
//! figures, then returns a JSON summary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::measure::{context_switches, cpu_time, rss_kib, Percentiles};
use crate::proto::{token, unix_now, Browser, Publisher};
use crate::stamped::{monotonic_ns, Epoch};

/// One server under test.
#[derive(Clone)]
pub struct Target {
    pub ws: SocketAddr,
    pub internal: SocketAddr,
    pub secret: String,
    pub pid: Option<u32>,
}

const CONNECT_CONCURRENCY: usize = 64;

pub(crate) fn topic_name(run: &str, k: usize) -> String {
    format!("load-{run}-{k}")
}

pub(crate) fn run_id() -> String {
    format!("{:x}", unix_now() ^ i64::from(std::process::id()))
}

/// Opens `count` authenticated sockets spread over `topics`; returns them
/// with their topic index, the elapsed time and per-connect latencies (µs).
pub(crate) async fn open_many(
    target: &Target,
    topics: &[String],
    count: usize,
    deadline: Instant,
) -> Result<(Vec<(usize, Browser)>, Duration, Vec<u64>)> {
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let expires = unix_now() + 3600;
    // Tokens are signed up front (one per topic and user; users repeat every
    // 1,000 sockets), so the connect loop measures connecting, not signing.
    let users = 1000usize;
    let tokens: Vec<Vec<String>> = topics
        .iter()
        .map(|topic| {
            (0..users)
                .map(|u| token(&target.secret, (u + 1) as i64, topic, expires))
                .collect()
        })
        .collect();
    for i in 0..count {
        let k = i % topics.len();
        let topic = topics[k].clone();
        let token = tokens[k][(i / topics.len()) % users].clone();
        let ws = target.ws;
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let begun = Instant::now();
            let browser =
                tokio::time::timeout_at(deadline.into(), Browser::open(ws, &topic, &token))
                    .await
                    .context("connect deadline")??;
            Ok::<_, anyhow::Error>((k, browser, begun.elapsed().as_micros() as u64))
        });
    }
    let mut sockets = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0usize;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((k, browser, micros)) => {
                sockets.push((k, browser));
                latencies.push(micros);
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        bail!("{errors} of {count} sockets failed to connect; first: {error:#}");
    }
    Ok((sockets, started.elapsed(), latencies))
}

pub(crate) async fn wait_sockets(
    publisher: &mut Publisher,
    want: usize,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = publisher.status().await?;
        if status["connected_sockets"].as_u64() == Some(want as u64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "server reports {} sockets, expected {want}",
                status["connected_sockets"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Idle sockets: RSS per socket and the connect+auth rate.
pub async fn idle(
    target: &Target,
    sockets: usize,
    topic_count: usize,
    hold: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = run_id();
    let topics: Vec<String> = (0..topic_count.max(1))
        .map(|k| topic_name(&run, k))
        .collect();
    let mut publisher = Publisher::new(target.internal, &target.secret);
    for topic in &topics {
        publisher.register(topic).await?;
    }
    let base_sockets = publisher.status().await?["connected_sockets"]
        .as_u64()
        .unwrap_or(0) as usize;
    let rss_before = target.pid.map(rss_kib).transpose()?;
    let cpu_before = target.pid.map(cpu_time).transpose()?;
    let own_before = cpu_time(std::process::id())?;
    let (open, elapsed, mut latencies) = open_many(target, &topics, sockets, deadline).await?;
    let own_cpu = cpu_time(std::process::id())?.saturating_sub(own_before);
    let server_cpu = match (cpu_before, target.pid.map(cpu_time).transpose()?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    wait_sockets(
        &mut publisher,
        base_sockets + sockets,
        Duration::from_secs(30),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = target.pid.map(rss_kib).transpose()?;
    let rate = sockets as f64 / elapsed.as_secs_f64();
    let connect = Percentiles::of(&mut latencies);
    println!("idle: {sockets} authenticated sockets over {} topics in {:.2} s = {rate:.0} connect+auth/s", topics.len(), elapsed.as_secs_f64());
    println!("idle: connect+auth latency {}", connect.ms());
    let server_us_per_connect = server_cpu.map(|c| c.as_secs_f64() * 1e6 / sockets as f64);
    if let Some(per) = server_us_per_connect {
        println!(
            "idle: CPU per connect+auth: server {per:.1} µs, load generator {:.1} µs",
            own_cpu.as_secs_f64() * 1e6 / sockets as f64
        );
    }
    let per_socket = match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            let per = (after.saturating_sub(before)) as f64 * 1024.0 / sockets as f64;
            println!(
                "idle: server RSS {before} KiB -> {after} KiB = {:.2} KiB per socket",
                per / 1024.0
            );
            Some(per / 1024.0)
        }
        _ => None,
    };
    tokio::time::sleep(hold).await;
    for (_, browser) in open {
        browser.close().await;
    }
    // Leave the server as found, so the next scenario counts from a settled base.
    wait_sockets(&mut publisher, base_sockets, Duration::from_secs(30)).await?;
    Ok(json!({
        "scenario": "idle", "sockets": sockets, "topics": topics.len(),
        "connect_per_s": rate, "connect_latency": connect.json(),
        "server_cpu_us_per_connect": server_us_per_connect,
        "loadgen_cpu_us_per_connect": own_cpu.as_secs_f64() * 1e6 / sockets as f64,
        "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_per_socket_kib": per_socket,
    }))
}

/// Where receivers record what arrived.
pub(crate) struct Received {
    pub(crate) node: usize,
    pub(crate) topic: usize,
    pub(crate) got: Arrivals,
}

/// The pushes one receiver got: how many, how many out of sequence, and
/// each one's publish→receive latency.
#[derive(Default)]
pub(crate) struct Arrivals {
    pub(crate) count: u64,
    pub(crate) out_of_order: u64,
    /// Publish (or floor write) to the receiver's read.
    pub(crate) latencies_us: Vec<u64>,
    /// Publish to the frame's arrival in the receiver's socket (kernel
    /// stamp, see `stamped`): without the receiver's own wait for a CPU.
    pub(crate) arrivals_us: Vec<u64>,
    /// The `seq` the next push should carry.
    pub(crate) next_seq: u64,
}

impl Arrivals {
    /// Counts `text` if it is a push (its payload's `seq` and send time
    /// `t`, ns after `epoch`), read now, its bytes in the socket at
    /// `arrived_ns` (CLOCK_MONOTONIC; before the epoch: no stamp).
    pub(crate) fn record(&mut self, text: &str, epoch: Epoch, arrived_ns: u64) {
        let now_ns = epoch.elapsed_ns().unwrap_or(u64::MAX);
        let (Some(seq), Some(t)) = (field(text, "\"seq\":"), field(text, "\"t\":")) else {
            return;
        };
        if seq != self.next_seq {
            self.out_of_order += 1;
        }
        self.next_seq = seq + 1;
        self.count += 1;
        self.latencies_us.push(now_ns.saturating_sub(t) / 1000);
        if let Some(arrived) = arrived_ns.checked_sub(epoch.ns) {
            self.arrivals_us.push(arrived.saturating_sub(t) / 1000);
        }
    }
}

/// Fan-out: `sockets` spread over `topic_count` topics (and over the nodes in
/// `targets`; publishes go to the first), one publisher at `rate`/s.
pub async fn fanout(
    targets: &[Target],
    sockets: usize,
    topic_count: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
) -> Result<Value> {
    let publish_target = targets.first().context("no target")?.clone();
    let run = run_id();
    let topics: Vec<String> = (0..topic_count.max(1))
        .map(|k| topic_name(&run, k))
        .collect();
    let mut publisher = Publisher::new(publish_target.internal, &publish_target.secret);
    for topic in &topics {
        publisher.register(topic).await?;
    }
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    let epoch = Epoch::now()?;
    let mut receivers = JoinSet::new();
    let per_node = sockets / targets.len();
    let finish: Finish = Arc::new(std::sync::OnceLock::new());
    let mut bases = Vec::new();
    for (n, target) in targets.iter().enumerate() {
        let mut status = Publisher::new(target.internal, &target.secret);
        let base = status.status().await?["connected_sockets"]
            .as_u64()
            .unwrap_or(0) as usize;
        bases.push(base);
        let (open, _, _) = open_many(target, &topics, per_node, connect_deadline).await?;
        wait_sockets(&mut status, base + per_node, Duration::from_secs(30)).await?;
        for (k, browser) in open {
            receivers.spawn(receive(browser, n, k, epoch, Arc::clone(&finish)));
        }
    }
    let cpu_before: Vec<Option<Duration>> = targets
        .iter()
        .map(|t| t.pid.and_then(|p| cpu_time(p).ok()))
        .collect();
    let switches_before: Vec<Option<u64>> = targets
        .iter()
        .map(|t| t.pid.and_then(|p| context_switches(p).ok()))
        .collect();
    // The publisher runs on a thread of its own, so its call latency is not
    // inflated by the receivers sharing this process's runtime.
    let publish_run = PublishRun {
        target: publish_target.internal,
        secret: publish_target.secret.clone(),
        topics: topics.clone(),
        rate,
        duration,
        payload_bytes,
        epoch,
    };
    let (sent_per_topic, call_latencies, failures, publish_elapsed) =
        tokio::task::spawn_blocking(move || publish_run.run())
            .await
            .context("publisher thread")??;
    // Deliveries may still be in flight: receivers stop once they have every
    // publish of their topic, or 5 s from now.
    let _ = finish.set((
        sent_per_topic.clone(),
        Instant::now() + Duration::from_secs(5),
    ));
    let expected = sent_per_topic;
    let mut results: Vec<Received> = Vec::new();
    let mut browsers = Vec::new();
    while let Some(joined) = receivers.join_next().await {
        if let Ok((received, browser)) = joined {
            results.push(received);
            browsers.push(browser);
        }
    }
    // Read before the sockets close, so closing is not counted as delivery work.
    let cpu_after: Vec<Option<Duration>> = targets
        .iter()
        .map(|t| t.pid.and_then(|p| cpu_time(p).ok()))
        .collect();
    let switches: Vec<Option<u64>> = targets
        .iter()
        .zip(&switches_before)
        .map(|(t, before)| {
            let after = t.pid.and_then(|p| context_switches(p).ok())?;
            Some(after.saturating_sub((*before)?))
        })
        .collect();
    for browser in browsers {
        browser.close().await;
    }
    for (target, base) in targets.iter().zip(bases) {
        let mut status = Publisher::new(target.internal, &target.secret);
        wait_sockets(&mut status, base, Duration::from_secs(30)).await?;
    }
    let published: u64 = expected.iter().sum();
    let mut summary = summarize(
        targets,
        &topics,
        &expected,
        results,
        call_latencies,
        cpu_before,
        cpu_after,
        publish_elapsed,
        failures,
        rate,
        per_node,
    )?;
    for (n, switches) in switches.into_iter().enumerate() {
        let Some(switches) = switches else { continue };
        let per_publish = switches as f64 / published.max(1) as f64;
        println!(
            "fanout node {n}: {switches} context switches of the server's threads = {per_publish:.2} per publish"
        );
        summary["nodes"][n]["context_switches"] = json!(switches);
        summary["nodes"][n]["context_switches_per_publish"] = json!(per_publish);
    }
    Ok(summary)
}

/// The publisher's call latencies (µs): as its thread read the answer,
/// and as the answer reached its socket (see `stamped`).
#[derive(Default)]
struct Calls {
    read_us: Vec<u64>,
    answered_us: Vec<u64>,
}

/// One publisher at a fixed rate, round-robin over the topics; each payload
/// carries its topic sequence number and send time.
struct PublishRun {
    target: SocketAddr,
    secret: String,
    topics: Vec<String>,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    epoch: Epoch,
}

impl PublishRun {
    fn run(self) -> Result<(Vec<u64>, Calls, u64, Duration)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut publisher = Publisher::new(self.target, &self.secret);
            let pad = "x".repeat(self.payload_bytes.saturating_sub(40));
            let mut sent_per_topic = vec![0u64; self.topics.len()];
            let mut calls = Calls::default();
            let mut ticker =
                tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate.max(0.1)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            let mut failures = 0u64;
            let mut i = 0usize;
            while started.elapsed() < self.duration {
                ticker.tick().await;
                let k = i % self.topics.len();
                i += 1;
                let seq = sent_per_topic[k];
                let t = self.epoch.elapsed_ns()?;
                let body = format!(
                    r#"{{"topic":"{}","payload":{{"seq":{seq},"t":{t},"pad":"{pad}"}}}}"#,
                    self.topics[k]
                );
                let begun = monotonic_ns()?;
                let (status, _) = publisher
                    .request("POST", "/internal/publish", &body)
                    .await?;
                calls
                    .read_us
                    .push(monotonic_ns()?.saturating_sub(begun) / 1000);
                if let Some(answered) = publisher.answered_ns().checked_sub(begun) {
                    calls.answered_us.push(answered / 1000);
                }
                if status == 200 {
                    sent_per_topic[k] += 1;
                } else {
                    failures += 1;
                }
            }
            Ok((sent_per_topic, calls, failures, started.elapsed()))
        })
    }
}

/// Set once publishing is over: how many publishes each topic got, and
/// until when receivers may wait for the rest.
pub(crate) type Finish = Arc<std::sync::OnceLock<(Vec<u64>, Instant)>>;

pub(crate) async fn receive(
    mut browser: Browser,
    node: usize,
    topic: usize,
    epoch: Epoch,
    finish: Finish,
) -> (Received, Browser) {
    let mut received = Received {
        node,
        topic,
        got: Arrivals::default(),
    };
    loop {
        if let Some((expected, drain_until)) = finish.get() {
            if received.got.count >= expected[topic] || Instant::now() >= *drain_until {
                break;
            }
        }
        let text = match tokio::time::timeout(Duration::from_millis(200), browser.next_text()).await
        {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => break,
            Err(_) => continue,
        };
        received.got.record(&text, epoch, browser.arrived_ns());
    }
    (received, browser)
}

/// The integer after `key` in `text` (a light parse: the receivers must stay cheap).
pub(crate) fn field(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    targets: &[Target],
    topics: &[String],
    expected: &[u64],
    results: Vec<Received>,
    mut calls: Calls,
    cpu_before: Vec<Option<Duration>>,
    cpu_after: Vec<Option<Duration>>,
    elapsed: Duration,
    failures: u64,
    rate: f64,
    per_node: usize,
) -> Result<Value> {
    let published: u64 = expected.iter().sum();
    let mut per_node_json = Vec::new();
    let mut all_complete = true;
    for n in 0..targets.len() {
        let mut latencies: Vec<u64> = Vec::new();
        let mut arrivals: Vec<u64> = Vec::new();
        let mut delivered = 0u64;
        let mut want = 0u64;
        let mut complete_sockets = 0usize;
        let mut out_of_order = 0u64;
        let mut seen = 0usize;
        for r in results.iter().filter(|r| r.node == n) {
            seen += 1;
            delivered += r.got.count;
            want += expected[r.topic];
            out_of_order += r.got.out_of_order;
            if r.got.count == expected[r.topic] {
                complete_sockets += 1;
            }
            latencies.extend_from_slice(&r.got.latencies_us);
            arrivals.extend_from_slice(&r.got.arrivals_us);
        }
        // Sockets whose receiver never reported count as empty.
        want += (per_node.saturating_sub(seen)) as u64 * (published / topics.len() as u64);
        let completeness = if want == 0 {
            1.0
        } else {
            delivered as f64 / want as f64
        };
        if completeness < 1.0 || out_of_order > 0 {
            all_complete = false;
        }
        let latency = Percentiles::of(&mut latencies);
        let arrival = Percentiles::of(&mut arrivals);
        let cpu = match (cpu_before[n], cpu_after[n]) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        };
        let cpu_per_delivery_us = cpu.map(|c| c.as_secs_f64() * 1e6 / delivered.max(1) as f64);
        let label = if targets.len() > 1 {
            format!(
                "node {n}{}",
                if n == 0 {
                    " (publisher's)"
                } else {
                    " (remote)"
                }
            )
        } else {
            "server".to_string()
        };
        println!(
            "fanout {label}: {complete_sockets}/{per_node} sockets complete, {delivered}/{want} deliveries ({:.3} %), {out_of_order} out of order",
            completeness * 100.0
        );
        println!("fanout {label}: publish->receive latency {}", latency.ms());
        println!(
            "fanout {label}: publish->arrival (in the receiver's socket) latency {}",
            arrival.ms()
        );
        if let (Some(cpu), Some(per)) = (cpu, cpu_per_delivery_us) {
            println!(
                "fanout {label}: server CPU {:.3} s = {per:.2} µs per delivery, {:.1} µs per publish",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / published.max(1) as f64
            );
        }
        per_node_json.push(json!({
            "node": n, "sockets": per_node, "complete_sockets": complete_sockets,
            "deliveries": delivered, "expected": want, "completeness": completeness,
            "out_of_order": out_of_order, "latency": latency.json(), "arrival": arrival.json(),
            "server_cpu_s": cpu.map(|c| c.as_secs_f64()), "cpu_us_per_delivery": cpu_per_delivery_us,
            "cpu_us_per_publish": cpu.map(|c| c.as_secs_f64() * 1e6 / published.max(1) as f64),
        }));
    }
    let answered = Percentiles::of(&mut calls.answered_us);
    let calls = Percentiles::of(&mut calls.read_us);
    let delivered_total: u64 = results.iter().map(|r| r.got.count).sum();
    println!(
        "fanout: {published} publishes in {:.1} s ({:.1}/s, target {rate}/s), {failures} failed; {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64(),
        delivered_total as f64 / elapsed.as_secs_f64()
    );
    println!("fanout: POST /internal/publish latency {}", calls.ms());
    println!(
        "fanout: POST /internal/publish answer in the publisher's socket {}",
        answered.ms()
    );
    Ok(json!({
        "scenario": if targets.len() > 1 { "cluster" } else { "fanout" },
        "topics": topics.len(), "published": published, "publish_failures": failures,
        "publish_rate": published as f64 / elapsed.as_secs_f64(),
        "publish_call": calls.json(), "publish_answered": answered.json(), "nodes": per_node_json, "complete": all_complete,
    }))
}

/// Churn: connect, authenticate and close `cycles` times; RSS before and after.
pub async fn churn(target: &Target, cycles: usize, concurrency: usize) -> Result<Value> {
    let run = run_id();
    let topic = topic_name(&run, 0);
    let mut publisher = Publisher::new(target.internal, &target.secret);
    publisher.register(&topic).await?;
    let rss_before = target.pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let token = token(&target.secret, 1, &topic, unix_now() + 3600);
    let per_worker = cycles.div_ceil(concurrency.max(1));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (ws, topic, token) = (target.ws, topic.clone(), token.clone());
        workers.spawn(async move {
            let mut done = 0usize;
            let mut failed = 0usize;
            for _ in 0..per_worker {
                if Instant::now() > deadline {
                    break;
                }
                match Browser::open(ws, &topic, &token).await {
                    Ok(browser) => {
                        browser.close().await;
                        done += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        });
    }
    let (mut done, mut failed) = (0usize, 0usize);
    while let Some(joined) = workers.join_next().await {
        let (d, f) = joined?;
        done += d;
        failed += f;
    }
    let elapsed = started.elapsed();
    wait_sockets(&mut publisher, 0, Duration::from_secs(30))
        .await
        .ok();
    let rss_after = target.pid.map(rss_kib).transpose()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_settled = target.pid.map(rss_kib).transpose()?;
    println!(
        "churn: {done} connect/auth/close cycles ({failed} failed) in {:.1} s = {:.0}/s",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    let change = match (rss_before, rss_settled) {
        (Some(b), Some(a)) => {
            let pct = (a as f64 - b as f64) * 100.0 / b as f64;
            println!(
                "churn: server RSS {b} KiB before, {} KiB after, {a} KiB settled ({pct:+.1} %)",
                rss_after.unwrap_or(0)
            );
            Some(pct)
        }
        _ => None,
    };
    Ok(json!({
        "scenario": "churn", "cycles": done, "failed": failed, "per_s": done as f64 / elapsed.as_secs_f64(),
        "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_settled_kib": rss_settled, "rss_change_pct": change,
    }))
}

/// Registers 10 fresh topics and opens `sockets` over them; returns once the
/// server counts them.
async fn open_counted(
    target: &Target,
    sockets: usize,
    deadline: Instant,
) -> Result<(Vec<String>, Vec<(usize, Browser)>)> {
    let run = run_id();
    let topics: Vec<String> = (0..10).map(|k| topic_name(&run, k)).collect();
    let mut publisher = Publisher::new(target.internal, &target.secret);
    for topic in &topics {
        publisher.register(topic).await?;
    }
    let base = publisher.status().await?["connected_sockets"]
        .as_u64()
        .unwrap_or(0) as usize;
    let (open, _, _) = open_many(target, &topics, sockets, deadline).await?;
    wait_sockets(&mut publisher, base + sockets, Duration::from_secs(30)).await?;
    Ok((topics, open))
}

/// Mass close: `sockets` close at once while `fresh` new sockets connect;
/// reports how long the new connects waited.
pub async fn mass_close(target: &Target, sockets: usize, fresh: usize) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (topics, open) = open_counted(target, sockets, deadline).await?;
    // Close everything at once (a proxy restart, a network blip) ...
    let closing = tokio::spawn(async move {
        let mut closers = JoinSet::new();
        for (_, browser) in open {
            closers.spawn(browser.close());
        }
        while closers.join_next().await.is_some() {}
    });
    // ... while new sockets keep arriving.
    let (new_sockets, elapsed, mut latencies) = open_many(target, &topics, fresh, deadline).await?;
    closing.await?;
    let connect = Percentiles::of(&mut latencies);
    println!(
        "mass close: {sockets} sockets closed at once while {fresh} connected in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!("mass close: new connect+auth latency {}", connect.ms());
    for (_, browser) in new_sockets {
        browser.close().await;
    }
    let mut publisher = Publisher::new(target.internal, &target.secret);
    wait_sockets(&mut publisher, 0, Duration::from_secs(30)).await?;
    Ok(
        json!({"scenario": "massclose", "closed": sockets, "connected": fresh, "connect_latency": connect.json()}),
    )
}

/// SIGTERM under load: `sockets` open, the server gets SIGTERM; counts the
/// 1001 close frames and times the exit.
pub async fn sigterm(target: &Target, sockets: usize) -> Result<Value> {
    let pid = target.pid.context("sigterm needs --server-pid")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (_, open) = open_counted(target, sockets, deadline).await?;
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let mut waiters = JoinSet::new();
    for (_, mut browser) in open {
        waiters.spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), browser.close_code())
                .await
                .ok()
                .flatten()
        });
    }
    let mut going_away = 0usize;
    while let Some(code) = waiters.join_next().await {
        if matches!(code, Ok(Some(1001))) {
            going_away += 1;
        }
    }
    let all_closed = started.elapsed();
    let mut exited = None;
    while started.elapsed() < Duration::from_secs(15) {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        {
            exited = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "sigterm: {going_away}/{sockets} sockets got close 1001 within {:.2} s; process exited after {}",
        all_closed.as_secs_f64(),
        exited.map_or("more than 15 s".to_string(), |e| format!("{:.2} s", e.as_secs_f64()))
    );
    Ok(
        json!({"scenario": "sigterm", "sockets": sockets, "going_away": going_away,
        "all_closed_s": all_closed.as_secs_f64(), "exit_s": exited.map(|e| e.as_secs_f64())}),
    )
}
