//! This node's identity and the node roster of Go 0.3.0 (the hash
//! `<prefix>nodes`, so a mixed cluster shows every node): field = node id,
//! value = a JSON entry rewritten every 5 s. A node is alive if seen in the
//! last 15 s; entries unseen for 15 min, or dead ones whose host name has a
//! live entry, are pruned; a node deletes its own entry on shutdown.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::format_go_seconds;
use crate::hub::HubCounts;

pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const ALIVE_WINDOW: Duration = Duration::from_secs(15);
pub const PRUNE_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RosterEntry {
    pub id: String,
    pub name: String,
    pub version: String,
    pub started_at: String,
    pub seen_at: String,
    pub active_topics: u64,
    pub connected_clients: u64,
    pub connected_sockets: u64,
    pub alive: bool,
    pub uptime: String,
    pub uptime_seconds: u64,
}

/// Who this process is: its id (also the envelopes' `origin_id`), its name
/// in the roster, and when it started.
pub struct Identity {
    pub id: String,
    pub name: String,
    started: Instant,
    started_at: OffsetDateTime,
}

impl Identity {
    /// A fresh random id; `name` empty = the host name.
    pub fn new(name: &str) -> Identity {
        Identity {
            id: hex::encode(rand::random::<[u8; 8]>()),
            name: if name.is_empty() {
                hostname()
            } else {
                name.to_string()
            },
            started: Instant::now(),
            started_at: OffsetDateTime::now_utc(),
        }
    }

    /// Uptime rounded to whole seconds, as Go's `Round(time.Second)` does.
    pub fn uptime_seconds(&self) -> u64 {
        let elapsed = self.started.elapsed();
        elapsed.as_secs() + u64::from(elapsed.subsec_millis() >= 500)
    }

    /// This node's roster entry, seen now.
    pub fn entry(&self, counts: HubCounts) -> RosterEntry {
        let uptime = self.uptime_seconds();
        RosterEntry {
            id: self.id.clone(),
            name: self.name.clone(),
            version: crate::version().to_string(),
            started_at: rfc3339(self.started_at),
            seen_at: rfc3339(OffsetDateTime::now_utc()),
            active_topics: counts.active_topics as u64,
            connected_clients: counts.connected_clients as u64,
            connected_sockets: counts.connected_sockets as u64,
            alive: true,
            uptime: format_go_seconds(uptime),
            uptime_seconds: uptime,
        }
    }
}

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Age of an entry's `seen_at`, if it can be read.
pub fn age(entry: &RosterEntry, now: OffsetDateTime) -> Option<Duration> {
    let seen = OffsetDateTime::parse(&entry.seen_at, &Rfc3339).ok()?;
    let age = now - seen;
    Some(age.try_into().unwrap_or(Duration::ZERO))
}

/// Reads the roster hash: entries with `alive` recomputed, and the fields to prune.
pub fn evaluate(
    raw: Vec<(String, String)>,
    now: OffsetDateTime,
) -> (Vec<RosterEntry>, Vec<String>) {
    let mut entries: Vec<(String, RosterEntry, Option<Duration>)> = raw
        .into_iter()
        .map(|(field, value)| {
            let mut entry: RosterEntry = serde_json::from_str(&value).unwrap_or_default();
            if entry.id.is_empty() {
                entry.id = field.clone();
            }
            let age = age(&entry, now);
            entry.alive = age.is_some_and(|a| a <= ALIVE_WINDOW);
            (field, entry, age)
        })
        .collect();
    let live_names: std::collections::HashSet<String> = entries
        .iter()
        .filter(|(_, e, _)| e.alive)
        .map(|(_, e, _)| e.name.clone())
        .collect();
    let mut prune = Vec::new();
    entries.retain(|(field, entry, age)| {
        let stale = age.is_none_or(|a| a > PRUNE_AFTER);
        let replaced = !entry.alive && !entry.name.is_empty() && live_names.contains(&entry.name);
        if stale || replaced {
            prune.push(field.clone());
            false
        } else {
            true
        }
    });
    let mut kept: Vec<RosterEntry> = entries.into_iter().map(|(_, e, _)| e).collect();
    kept.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    (kept, prune)
}

/// This machine's host name, for the roster's `name`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str, seen: OffsetDateTime) -> (String, String) {
        let e = RosterEntry {
            id: id.into(),
            name: name.into(),
            seen_at: rfc3339(seen),
            ..Default::default()
        };
        (id.to_string(), serde_json::to_string(&e).expect("json"))
    }

    #[test]
    fn alive_and_pruning_rules() {
        let now = OffsetDateTime::now_utc();
        let raw = vec![
            entry("a", "host1", now - time::Duration::seconds(3)),
            entry("b", "host2", now - time::Duration::seconds(60)),
            entry("c", "host1", now - time::Duration::seconds(60)), // dead, host1 lives on as a
            entry("d", "host3", now - time::Duration::minutes(20)),
            ("e".to_string(), "not json".to_string()),
        ];
        let (kept, prune) = evaluate(raw, now);
        let ids: Vec<(&str, bool)> = kept.iter().map(|e| (e.id.as_str(), e.alive)).collect();
        assert_eq!(ids, vec![("a", true), ("b", false)]);
        let mut prune = prune;
        prune.sort();
        assert_eq!(prune, vec!["c", "d", "e"]);
    }
}
