//! The cluster-wide topic count: one `SCAN` at a time, shared by every
//! caller that asked while it ran, so a burst of status calls costs one scan
//! and the answer is never older than the question.

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError};

#[derive(Default)]
pub struct CountCache {
    /// When the last scan started, and what it counted.
    last: Mutex<Option<(Instant, usize)>>,
    /// The last count, readable without waiting (metrics).
    value: std::sync::atomic::AtomicUsize,
    known: std::sync::atomic::AtomicBool,
}

impl CountCache {
    pub async fn get(&self, broker: &Broker) -> Result<usize, BrokerError> {
        use std::sync::atomic::Ordering;
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, count)) = *last {
            if started >= asked {
                return Ok(count);
            }
        }
        let started = Instant::now();
        let count = broker.topic_count().await?;
        *last = Some((started, count));
        self.value.store(count, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
        Ok(count)
    }

    pub fn last(&self) -> Option<usize> {
        use std::sync::atomic::Ordering;
        self.known
            .load(Ordering::Relaxed)
            .then(|| self.value.load(Ordering::Relaxed))
    }
}
