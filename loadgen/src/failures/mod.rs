//! The scenarios of the issue "Failure honesty": sockets that stop reading
//! next to sockets that keep up (`stuck.rs`), and SIGTERM under a publish
//! stream (`drain.rs`). Both publish back-to-back (or at `--rate`) from a
//! thread of their own and say what every socket received; what they share
//! is here.

mod drain;
mod overload;
mod stuck;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::proto::{Browser, Publisher};
use crate::scenario::{field, Target};
use crate::stamped::Epoch;

pub use self::drain::drain;
pub use self::overload::overload;
pub use self::stuck::stuck;

/// A fresh topic registered for one run, the publisher that registered it,
/// and the server's socket count before the run's sockets connect.
pub(crate) async fn fresh_topic(target: &Target) -> Result<(String, Publisher, usize)> {
    let topic = crate::scenario::topic_name(&crate::scenario::run_id(), 0);
    let mut publisher = Publisher::new(target.internal, &target.secret);
    publisher.register(&topic).await?;
    let base = publisher.status().await?["connected_sockets"]
        .as_u64()
        .unwrap_or(0) as usize;
    Ok((topic, publisher, base))
}

/// What one reading socket saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    pushes: u64,
    out_of_order: u64,
    missed: u64,
    /// Lag notices received, and when the first came (since the reader started).
    lag_notices: u64,
    first_lag: Option<Duration>,
    last_push: Duration,
    close_code: Option<u16>,
}

/// Reads pushes (checking their `seq`) until `want` arrived, the server
/// closed, or the drain deadline (set once publishing is over) passed.
pub(crate) async fn read_pushes(
    mut browser: Browser,
    want: u64,
    drain_until: Arc<std::sync::OnceLock<Instant>>,
) -> (Seen, Browser) {
    let mut seen = Seen::default();
    let mut next_seq = 0u64;
    let started = Instant::now();
    while seen.pushes < want {
        if drain_until
            .get()
            .is_some_and(|until| Instant::now() >= *until)
        {
            break;
        }
        let text = match tokio::time::timeout(Duration::from_millis(200), browser.next_text()).await
        {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                seen.close_code = close_code_of(&error);
                break;
            }
            Err(_) => continue,
        };
        if text.starts_with(r#"{"type":"lagged""#) {
            seen.missed += field(&text, "\"missed\":").unwrap_or(0);
            seen.lag_notices += 1;
            seen.first_lag.get_or_insert(started.elapsed());
            continue;
        }
        let Some(seq) = field(&text, "\"seq\":") else {
            continue;
        };
        if seq != next_seq && seen.missed == 0 {
            seen.out_of_order += 1;
        }
        next_seq = seq + 1;
        seen.pushes += 1;
        seen.last_push = started.elapsed();
    }
    (seen, browser)
}

fn close_code_of(error: &anyhow::Error) -> Option<u16> {
    error
        .to_string()
        .strip_prefix("closed by the server with ")
        .and_then(|code| code.parse().ok())
}

/// What a [`PublishStream`] did.
pub(crate) struct Streamed {
    /// Publishes answered 200, in seq order.
    pub(crate) accepted: u64,
    pub(crate) elapsed: Duration,
    /// Each call's time from its request to its answer, as the publisher
    /// read it (µs, in seq order).
    pub(crate) answers_us: Vec<u64>,
}

/// Publishes `{"seq":n,"pad":…}` `count` times to one topic, back-to-back
/// (`rate` 0) or at `rate`/s, on a thread of its own.
pub(crate) struct PublishStream {
    target: std::net::SocketAddr,
    secret: String,
    topic: String,
    count: u64,
    payload_bytes: usize,
    rate: f64,
    /// When set, each payload also carries `"t"`: nanoseconds since this.
    epoch: Option<Epoch>,
}

impl PublishStream {
    pub(crate) fn new(
        target: &Target,
        topic: &str,
        count: u64,
        payload_bytes: usize,
        rate: f64,
    ) -> Self {
        PublishStream {
            target: target.internal,
            secret: target.secret.clone(),
            topic: topic.to_string(),
            count,
            payload_bytes,
            rate,
            epoch: None,
        }
    }

    /// Payloads carry their send time (`"t"`, nanoseconds since `epoch`).
    pub(crate) fn stamped(mut self, epoch: Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// The publishes answered 200 (in seq order), the time taken, and each
    /// call's time to its answer.
    pub(crate) fn run(self) -> Result<Streamed> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut publisher = Publisher::new(self.target, &self.secret);
            let pad = "x".repeat(self.payload_bytes.saturating_sub(30));
            let mut ticker = (self.rate > 0.0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate)));
            let started = Instant::now();
            let mut accepted = 0u64;
            let mut answers_us = Vec::with_capacity(self.count.min(1 << 20) as usize);
            for _ in 0..self.count {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let stamp = match self.epoch {
                    Some(epoch) => format!(r#""t":{},"#, epoch.elapsed_ns()?),
                    None => String::new(),
                };
                let body = format!(
                    r#"{{"topic":"{}","payload":{{"seq":{accepted},{stamp}"pad":"{pad}"}}}}"#,
                    self.topic
                );
                let call = Instant::now();
                let (status, text) = publisher
                    .request("POST", "/internal/publish", &body)
                    .await?;
                answers_us.push(call.elapsed().as_micros() as u64);
                if status != 200 {
                    anyhow::bail!("publish {accepted}: HTTP {status} {text}");
                }
                accepted += 1;
            }
            Ok(Streamed {
                accepted,
                elapsed: started.elapsed(),
                answers_us,
            })
        })
    }
}
