//! `overload`: publishes to one topic back-to-back, as fast as the server
//! accepts them, with every socket reading. What bounded staleness promises:
//! every frame a socket did not get is reported in a `lagged` notice (so
//! pushes + missed = publishes on every socket, in order), the frames that
//! are delivered are fresh (their publish→receive latency, and their
//! arrival in the socket, which is what the server's age bound holds to:
//! it checks a frame's age when it writes it), the publisher
//! is not slowed down, and the server's RSS stays bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::PublishStream;
use crate::measure::{rss_kib, Percentiles};
use crate::proto::Browser;
use crate::scenario::{field, open_many, wait_sockets, Arrivals, Target};
use crate::stamped::Epoch;

/// What one socket saw.
#[derive(Default)]
struct Accounted {
    /// The pushes; out of order: a push whose seq was not the one the
    /// pushes and notices before it account for.
    got: Arrivals,
    missed: u64,
    lag_notices: u64,
}

/// `sockets` reading one topic; `publishes` of `payload_bytes` back-to-back.
pub async fn overload(
    target: &Target,
    sockets: usize,
    publishes: u64,
    payload_bytes: usize,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (topic, mut publisher, base) = super::fresh_topic(target).await?;
    let (open, _, _) = open_many(target, std::slice::from_ref(&topic), sockets, deadline).await?;
    wait_sockets(&mut publisher, base + sockets, Duration::from_secs(30)).await?;
    let epoch = Epoch::now()?;
    let published = Arc::new(AtomicU64::new(u64::MAX));
    let mut receivers = JoinSet::new();
    for (_, browser) in open {
        receivers.spawn(account(browser, epoch, Arc::clone(&published)));
    }
    // The server's RSS every 100 ms while publishing and delivering.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = target.pid.map(|pid| {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut peak = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    let rss_before = target.pid.map(rss_kib).transpose()?;
    let stream = PublishStream::new(target, &topic, publishes, payload_bytes, 0.0).stamped(epoch);
    let mut streamed = tokio::task::spawn_blocking(move || stream.run())
        .await
        .context("publisher thread")??;
    let (accepted, publish_elapsed) = (streamed.accepted, streamed.elapsed);
    let answers = Percentiles::of(&mut streamed.answers_us);
    published.store(accepted, Ordering::Relaxed);
    let mut seen = Vec::new();
    let mut browsers = Vec::new();
    while let Some(joined) = receivers.join_next().await {
        let (accounted, browser) = joined?;
        seen.push(accounted);
        browsers.push(browser);
    }
    let delivered_by = Duration::from_nanos(epoch.elapsed_ns()?);
    done.store(true, Ordering::Relaxed);
    let rss_peak = match sampler {
        Some(sampler) => Some(sampler.await?),
        None => None,
    };
    let rss_after = target.pid.map(rss_kib).transpose()?;
    for browser in browsers {
        browser.close().await;
    }
    wait_sockets(&mut publisher, base, Duration::from_secs(30)).await?;

    let accounted = seen
        .iter()
        .filter(|s| s.got.count + s.missed == accepted && s.got.out_of_order == 0)
        .count();
    // What the first few sockets that do not account for everything saw.
    for s in seen
        .iter()
        .filter(|s| s.got.count + s.missed != accepted || s.got.out_of_order > 0)
        .take(3)
    {
        println!(
            "overload: unaccounted socket: {} pushes + {} missed of {accepted}, {} out of order, {} notices",
            s.got.count, s.missed, s.got.out_of_order, s.lag_notices
        );
    }
    let pushes: u64 = seen.iter().map(|s| s.got.count).sum();
    let missed: u64 = seen.iter().map(|s| s.missed).sum();
    let notices: u64 = seen.iter().map(|s| s.lag_notices).sum();
    let mut latencies: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.got.latencies_us.iter().copied())
        .collect();
    let latency = Percentiles::of(&mut latencies);
    let mut arrivals: Vec<u64> = seen
        .iter()
        .flat_map(|s| s.got.arrivals_us.iter().copied())
        .collect();
    let arrival = Percentiles::of(&mut arrivals);
    let rate = accepted as f64 / publish_elapsed.as_secs_f64();
    let share = pushes as f64 * 100.0 / (accepted * sockets as u64).max(1) as f64;
    println!(
        "overload: {sockets} sockets, {accepted} publishes of {payload_bytes} B accepted back-to-back in {:.2} s ({rate:.0}/s); everything delivered or reported {:.2} s after the first",
        publish_elapsed.as_secs_f64(),
        delivered_by.as_secs_f64()
    );
    println!(
        "overload: publish answers (request to answer read) {}",
        answers.ms()
    );
    println!(
        "overload: {pushes} pushes delivered ({share:.1} %), {missed} reported missed in {notices} lagged notices; {accounted}/{sockets} sockets account for every publish, in order"
    );
    println!(
        "overload: publish->receive latency of the delivered frames {}",
        latency.ms()
    );
    println!(
        "overload: publish->arrival (in the receiver's socket) latency of the delivered frames {}",
        arrival.ms()
    );
    if let (Some(before), Some(peak), Some(after)) = (rss_before, rss_peak, rss_after) {
        println!("overload: server RSS {before} KiB before, peak {peak} KiB, {after} KiB after");
    }
    Ok(json!({
        "scenario": "overload", "sockets": sockets, "published": accepted,
        "publish_per_s": rate, "publish_s": publish_elapsed.as_secs_f64(),
        "delivered_pct": share, "pushes": pushes, "missed": missed, "lag_notices": notices,
        "accounted_sockets": accounted, "all_accounted": accounted == sockets,
        "latency": latency.json(), "arrival": arrival.json(), "publish_call": answers.json(),
        "rss_before_kib": rss_before, "rss_peak_kib": rss_peak, "rss_after_kib": rss_after,
    }))
}

/// Reads until pushes and lag notices account for every publish (once the
/// count is known), the server closes, or 30 s of silence.
async fn account(
    mut browser: Browser,
    epoch: Epoch,
    published: Arc<AtomicU64>,
) -> (Accounted, Browser) {
    let mut seen = Accounted::default();
    let mut silent_since = Instant::now();
    loop {
        if seen.got.next_seq >= published.load(Ordering::Relaxed) {
            break;
        }
        if silent_since.elapsed() > Duration::from_secs(30) {
            break;
        }
        let text = match tokio::time::timeout(Duration::from_millis(200), browser.next_text()).await
        {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => break,
            Err(_) => continue,
        };
        silent_since = Instant::now();
        if text.starts_with(r#"{"type":"lagged""#) {
            let missed = field(&text, "\"missed\":").unwrap_or(0);
            seen.missed += missed;
            seen.lag_notices += 1;
            seen.got.next_seq += missed;
            continue;
        }
        seen.got.record(&text, epoch, browser.arrived_ns());
    }
    (seen, browser)
}
