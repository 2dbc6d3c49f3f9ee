//! Changes the shared registry has not taken yet, one per topic (the latest
//! wins), each with a sequence number so that a write-back only clears what
//! it actually wrote: a change made while the write-back was in flight stays
//! pending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::topic::{TopicChange, TopicMeta};

#[derive(Default)]
pub struct Pending {
    changes: Mutex<HashMap<String, (Kind, u64)>>,
    next: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Unregister,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Kind, u64)>> {
        self.changes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn mark(&self, topic: &str, change: &TopicChange) {
        let kind = match change {
            TopicChange::Register { .. } => Kind::Register,
            TopicChange::Unregister { .. } => Kind::Unregister,
        };
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(topic.to_string(), (kind, seq));
    }

    /// The broker took the latest change of `topic` directly.
    pub fn clear(&self, topic: &str) {
        self.lock().remove(topic);
    }

    pub fn is_register(&self, topic: &str) -> bool {
        self.lock()
            .get(topic)
            .is_some_and(|(kind, _)| *kind == Kind::Register)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The pending changes as they are to be written now, ordered as they
    /// were made, and the marks to settle once written. A registration is
    /// written with what the local registry holds now (`local`); one that
    /// expired meanwhile has nothing left to write.
    pub fn snapshot(
        &self,
        local: impl Fn(&str) -> Option<(TopicMeta, Duration)>,
    ) -> (Vec<TopicChange>, Vec<(String, u64)>) {
        let mut entries: Vec<(String, Kind, u64)> = self
            .lock()
            .iter()
            .map(|(topic, (kind, seq))| (topic.clone(), *kind, *seq))
            .collect();
        entries.sort_by_key(|(_, _, seq)| *seq);
        let mut changes = Vec::with_capacity(entries.len());
        let mut marks = Vec::with_capacity(entries.len());
        for (topic, kind, seq) in entries {
            match kind {
                Kind::Register => {
                    if let Some((meta, ttl)) = local(&topic) {
                        changes.push(TopicChange::Register {
                            topic: topic.clone(),
                            meta,
                            ttl,
                        });
                    }
                }
                Kind::Unregister => changes.push(TopicChange::Unregister {
                    topic: topic.clone(),
                }),
            }
            marks.push((topic, seq));
        }
        (changes, marks)
    }

    /// Clears what a write-back wrote, unless it changed again meanwhile.
    pub fn settle(&self, marks: &[(String, u64)]) {
        let mut changes = self.lock();
        for (topic, seq) in marks {
            if changes.get(topic).is_some_and(|(_, now)| now == seq) {
                changes.remove(topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(topic: &str) -> TopicChange {
        TopicChange::Register {
            topic: topic.into(),
            meta: TopicMeta::default(),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn latest_change_wins_in_order_and_settles_only_what_was_written() {
        let pending = Pending::default();
        pending.mark("a", &register("a"));
        pending.mark("b", &register("b"));
        pending.mark("a", &TopicChange::Unregister { topic: "a".into() });
        let local = |_: &str| Some((TopicMeta::default(), Duration::from_secs(5)));
        let (changes, marks) = pending.snapshot(local);
        let topics: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.topic(), matches!(c, TopicChange::Register { .. })))
            .collect();
        assert_eq!(topics, vec![("b", true), ("a", false)]);
        // b changes again while the write-back is in flight: it stays pending.
        pending.mark("b", &register("b"));
        pending.settle(&marks);
        assert_eq!(pending.len(), 1);
        assert!(pending.is_register("b"));
    }

    #[test]
    fn an_expired_registration_has_nothing_to_write() {
        let pending = Pending::default();
        pending.mark("gone", &register("gone"));
        let (changes, marks) = pending.snapshot(|_| None);
        assert!(changes.is_empty());
        pending.settle(&marks);
        assert_eq!(pending.len(), 0);
    }
}
