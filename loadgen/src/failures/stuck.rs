//! `stuck`: sockets that never read after `auth_ok` next to sockets that
//! do, on one topic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{read_pushes, PublishStream};
use crate::measure::cpu_time;
use crate::proto::Publisher;
use crate::scenario::{open_many, wait_sockets, Target};

/// `stuck` sockets that never read after `auth_ok` and `readers` that do,
/// all on one topic; `publishes` of `payload_bytes`. Reports what the
/// readers got, when the server closed the stuck sockets, and the kernel's
/// TCP memory at its peak.
pub async fn stuck(
    target: &Target,
    stuck: usize,
    readers: usize,
    publishes: u64,
    payload_bytes: usize,
    rate: f64,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (topic, mut publisher, base) = super::fresh_topic(target).await?;
    let topics = [topic.clone()];
    let (reading, _, _) = open_many(target, &topics, readers, deadline).await?;
    let (stuck_sockets, _, _) = open_many(target, &topics, stuck, deadline).await?;
    wait_sockets(
        &mut publisher,
        base + readers + stuck,
        Duration::from_secs(30),
    )
    .await?;
    let metrics_before = counters(&mut publisher).await?;
    let cpu_before = target.pid.and_then(|p| cpu_time(p).ok());

    let drain_until = Arc::new(std::sync::OnceLock::new());
    let mut receivers = JoinSet::new();
    for (_, browser) in reading {
        receivers.spawn(read_pushes(browser, publishes, Arc::clone(&drain_until)));
    }
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(watch(
        Publisher::new(target.internal, &target.secret),
        started,
        Arc::clone(&done),
    ));
    let stream = PublishStream::new(target, &topic, publishes, payload_bytes, rate);
    let streamed = tokio::task::spawn_blocking(move || stream.run())
        .await
        .context("publisher thread")??;
    let (accepted, publish_elapsed) = (streamed.accepted, streamed.elapsed);
    let cpu_after = target.pid.and_then(|p| cpu_time(p).ok());
    let _ = drain_until.set(Instant::now() + Duration::from_secs(5));
    let mut seen = Vec::new();
    // Kept open: a reader leaving would look like a stuck socket closing.
    let mut readers_open = Vec::new();
    while let Some(joined) = receivers.join_next().await {
        let (reader_seen, browser) = joined?;
        seen.push(reader_seen);
        readers_open.push(browser);
    }
    // Give the server up to 30 s from the first publish to close the stuck ones.
    let mut all_closed = None;
    while started.elapsed() < Duration::from_secs(30) {
        if publisher.status().await?["connected_sockets"].as_u64() <= Some((base + readers) as u64)
        {
            all_closed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let watched = monitor.await.context("monitor")??;
    drop(readers_open);
    let metrics_after = counters(&mut publisher).await?;
    // What the stuck sockets find once they do read: a close frame or not.
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut closers = JoinSet::new();
    for (_, mut browser) in stuck_sockets {
        closers.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), browser.close_code())
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(code) = closers.join_next().await {
        let label = match code? {
            Some(code) => code.to_string(),
            None => "none".to_string(),
        };
        *codes.entry(label).or_default() += 1;
    }

    let full = seen
        .iter()
        .filter(|s| s.pushes == accepted && s.out_of_order == 0)
        .count();
    let worst = seen.iter().map(|s| s.pushes).min().unwrap_or(0);
    let share = |n: u64| n as f64 * 100.0 / accepted.max(1) as f64;
    println!(
        "stuck: {stuck} stuck + {readers} reading sockets, {accepted} publishes of {payload_bytes} B in {:.2} s ({:.0}/s)",
        publish_elapsed.as_secs_f64(),
        accepted as f64 / publish_elapsed.as_secs_f64()
    );
    for (i, s) in seen.iter().enumerate() {
        println!(
            "stuck: reader {i}: {}/{accepted} pushes ({:.1} %), the last after {:.2} s; {} out of order, {} lagged notices ({} missed), the first after {:?}",
            s.pushes,
            share(s.pushes),
            s.last_push.as_secs_f64(),
            s.out_of_order,
            s.lag_notices,
            s.missed,
            s.first_lag
        );
    }
    let secs = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0);
    println!(
        "stuck: server closed the first stuck socket after {:?} s, the last after {:?} s (from the first publish)",
        secs(watched.first_close),
        secs(all_closed)
    );
    println!("stuck: what the stuck sockets read at the end: {codes:?}");
    println!(
        "stuck: kernel TCP memory peak {} MiB (sockstat), {} MiB before",
        watched.peak_tcp_pages * 4 / 1024,
        watched.first_tcp_pages * 4 / 1024
    );
    let changed: BTreeMap<String, u64> = metrics_after
        .iter()
        .filter_map(|(name, after)| {
            let delta = after - metrics_before.get(name).copied().unwrap_or(0);
            (delta > 0 && !name.contains("api_") && !name.contains("latency"))
                .then(|| (name.clone(), delta))
        })
        .collect();
    println!("stuck: server counters during the run: {changed:?}");
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "stuck: server CPU while publishing {:.2} s",
            after.saturating_sub(before).as_secs_f64()
        );
    }
    Ok(json!({
        "scenario": "stuck", "stuck": stuck, "readers": readers, "published": accepted,
        "payload_bytes": payload_bytes, "publish_s": publish_elapsed.as_secs_f64(),
        "readers_complete": full, "worst_reader_pushes": worst, "worst_reader_pct": share(worst),
        "first_stuck_close_s": secs(watched.first_close), "all_stuck_closed_s": secs(all_closed),
        "stuck_close_codes": codes, "tcp_mem_peak_mib": watched.peak_tcp_pages * 4 / 1024,
        "counters": changed,
    }))
}

/// What the monitor saw: when the server's socket count first fell, and
/// the kernel's TCP memory (pages).
struct Watched {
    first_close: Option<Duration>,
    first_tcp_pages: u64,
    peak_tcp_pages: u64,
}

async fn watch(mut status: Publisher, started: Instant, done: Arc<AtomicBool>) -> Result<Watched> {
    let mut watched = Watched {
        first_close: None,
        first_tcp_pages: tcp_pages(),
        peak_tcp_pages: 0,
    };
    let at_start = status.status().await?["connected_sockets"]
        .as_u64()
        .unwrap_or(0);
    while !done.load(Ordering::Relaxed) {
        watched.peak_tcp_pages = watched.peak_tcp_pages.max(tcp_pages());
        let sockets = status.status().await?["connected_sockets"]
            .as_u64()
            .unwrap_or(0);
        if sockets < at_start && watched.first_close.is_none() {
            watched.first_close = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(watched)
}

/// The kernel's TCP memory in pages (`/proc/net/sockstat`, `TCP: … mem N`).
fn tcp_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut words = line.split_whitespace();
            words.find(|w| *w == "mem")?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The server's unlabelled counters, by name.
async fn counters(publisher: &mut Publisher) -> Result<BTreeMap<String, u64>> {
    let (_, text) = publisher.request("GET", "/metrics", "").await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("skywave_") && line.contains("_total "))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}
