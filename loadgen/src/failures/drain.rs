//! `drain`: SIGTERM right after a publish stream, with every socket reading.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{read_pushes, PublishStream};
use crate::measure::Percentiles;
use crate::scenario::{open_many, wait_sockets, Target};

/// SIGTERM right after the last of `publishes` (to one topic) was
/// answered 200, with `sockets` reading: how many of the accepted
/// publishes each socket got before its close, and the close code.
pub async fn drain(
    target: &Target,
    sockets: usize,
    publishes: u64,
    payload_bytes: usize,
    rate: f64,
) -> Result<Value> {
    let pid = target.pid.context("drain needs --server-pid")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (topic, mut publisher, base) = super::fresh_topic(target).await?;
    let (open, _, _) = open_many(target, std::slice::from_ref(&topic), sockets, deadline).await?;
    wait_sockets(&mut publisher, base + sockets, Duration::from_secs(30)).await?;
    let drain_until = Arc::new(std::sync::OnceLock::new());
    let mut receivers = JoinSet::new();
    for (_, browser) in open {
        receivers.spawn(read_pushes(browser, u64::MAX, Arc::clone(&drain_until)));
    }
    let stream = PublishStream::new(target, &topic, publishes, payload_bytes, rate);
    let accepted = tokio::task::spawn_blocking(move || stream.run())
        .await
        .context("publisher thread")??
        .accepted;
    let signalled = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let _ = drain_until.set(Instant::now() + Duration::from_secs(12));
    let mut counts = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut complete = 0usize;
    while let Some(joined) = receivers.join_next().await {
        let seen = joined?.0;
        counts.push(seen.pushes);
        if seen.pushes == accepted && seen.out_of_order == 0 && seen.missed == 0 {
            complete += 1;
        }
        let label = seen
            .close_code
            .map_or("none".to_string(), |c| c.to_string());
        *codes.entry(label).or_default() += 1;
    }
    let all_closed = signalled.elapsed();
    let spread = Percentiles::of(&mut counts);
    println!(
        "drain: {sockets} sockets, {accepted} publishes of {payload_bytes} B answered 200, then SIGTERM"
    );
    println!(
        "drain: pushes per socket before the close: min {} p50 {} max {}; {complete}/{sockets} got all {accepted}",
        counts_min(&counts),
        spread.p50,
        spread.max
    );
    println!(
        "drain: close codes {codes:?}, every socket closed within {:.2} s of the signal",
        all_closed.as_secs_f64()
    );
    Ok(json!({
        "scenario": "drain", "sockets": sockets, "published": accepted,
        "min_pushes": counts_min(&counts), "p50_pushes": spread.p50, "complete_sockets": complete,
        "close_codes": codes, "all_closed_s": all_closed.as_secs_f64(),
    }))
}

fn counts_min(counts: &[u64]) -> u64 {
    counts.iter().copied().min().unwrap_or(0)
}
