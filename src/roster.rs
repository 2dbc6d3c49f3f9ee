//! This node's identity and the node roster of Go 0.3.0 (the hash
//! `<prefix>nodes`, so a mixed cluster shows every node): field = node id,
//! value = a JSON entry rewritten every heartbeat (5 s). A node is alive if
//! seen within the alive window (15 s); entries unseen for the prune window
//! (15 min), or dead ones whose host name has a live entry, are pruned; a node
//! deletes its own entry on shutdown (timings: `roster:` in the config).
//!
//! skywave entries also carry a `fingerprint` of the settings every node of a
//! fleet must share (secret, `topic_ttl`, key prefix): an HMAC keyed with the
//! secret, so it reveals nothing of it, yet equal secrets give equal values.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{format_go_seconds, Config, RosterSettings};
use crate::hub::HubCounts;

/// How another node's settings compare with this node's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigMatch {
    Same,
    Different,
    /// No fingerprint (a Go node, or an older skywave).
    Unknown,
}

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
    /// skywave only: the fleet-settings fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Worked out by the reader (never stored): the fingerprint against its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_match: Option<ConfigMatch>,
}

/// Who this process is: its id (also the envelopes' `origin_id`), its name
/// in the roster, and when it started.
pub struct Identity {
    pub id: String,
    pub name: String,
    pub fingerprint: String,
    /// The roster's timing.
    pub roster: RosterSettings,
    started: Instant,
    started_at: OffsetDateTime,
}

impl Identity {
    /// A fresh random id; the name is `node_name`, or the host name.
    pub fn new(config: &Config) -> Identity {
        Identity {
            id: hex::encode(rand::random::<[u8; 8]>()),
            name: if config.node_name.is_empty() {
                hostname()
            } else {
                config.node_name.clone()
            },
            fingerprint: fingerprint(config),
            roster: config.roster.clone(),
            started: Instant::now(),
            started_at: OffsetDateTime::now_utc(),
        }
    }

    /// Reads the roster hash with this node's rules: entries with `alive`
    /// and `config_match` worked out, and the fields to prune.
    pub fn evaluate(
        &self,
        raw: Vec<(String, String)>,
        now: OffsetDateTime,
    ) -> (Vec<RosterEntry>, Vec<String>) {
        let (mut entries, prune) = evaluate(raw, now, &self.roster);
        for entry in &mut entries {
            entry.config_match = Some(match &entry.fingerprint {
                None => ConfigMatch::Unknown,
                Some(theirs) if *theirs == self.fingerprint => ConfigMatch::Same,
                Some(_) => ConfigMatch::Different,
            });
        }
        (entries, prune)
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
            fingerprint: Some(self.fingerprint.clone()),
            config_match: None,
        }
    }
}

/// 16 hex characters of HMAC-SHA256(secret, the other shared settings).
fn fingerprint(config: &Config) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(config.worker_secret.expose().as_bytes())
    else {
        return String::new();
    };
    mac.update(b"skywave fleet fingerprint v1\0");
    mac.update(config.topic_ttl.as_millis().to_string().as_bytes());
    mac.update(b"\0");
    mac.update(config.redis.key_prefix.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
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
    rules: &RosterSettings,
) -> (Vec<RosterEntry>, Vec<String>) {
    let mut entries: Vec<(String, RosterEntry, Option<Duration>)> = raw
        .into_iter()
        .map(|(field, value)| {
            let mut entry: RosterEntry = serde_json::from_str(&value).unwrap_or_default();
            if entry.id.is_empty() {
                entry.id = field.clone();
            }
            let age = age(&entry, now);
            entry.alive = age.is_some_and(|a| a <= rules.alive_window);
            entry.config_match = None;
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
        let stale = age.is_none_or(|a| a > rules.prune_after);
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
        let (kept, prune) = evaluate(raw, now, &RosterSettings::default());
        let ids: Vec<(&str, bool)> = kept.iter().map(|e| (e.id.as_str(), e.alive)).collect();
        assert_eq!(ids, vec![("a", true), ("b", false)]);
        let mut prune = prune;
        prune.sort();
        assert_eq!(prune, vec!["c", "d", "e"]);
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    fn config(secret: &str, ttl: &str) -> Config {
        let name = format!("node-{ttl}-{}", &secret[..3]);
        Config::from_yaml(&format!(
            "worker_secret: \"{secret}\"\ntopic_ttl: {ttl}\nnode_name: {name}\n"
        ))
        .expect("config")
        .config
    }

    #[test]
    fn fingerprints_compare_settings_without_revealing_the_secret() {
        let secret = "fingerprint-secret-0123456789abcdef";
        let a = Identity::new(&config(secret, "24h"));
        let b = Identity::new(&config(secret, "24h"));
        let other_ttl = Identity::new(&config(secret, "1h"));
        let other_secret = Identity::new(&config("another-secret-0123456789abcdef0", "24h"));
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, other_ttl.fingerprint);
        assert_ne!(a.fingerprint, other_secret.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
        assert!(!a.fingerprint.contains(&secret[..8]));

        let go_entry = r#"{"id":"00000000000000aa","name":"go","seen_at":"2099-01-01T00:00:00Z"}"#;
        let now = OffsetDateTime::now_utc();
        let raw = vec![
            (
                b.id.clone(),
                serde_json::to_string(&b.entry(HubCounts::default())).expect("json"),
            ),
            (
                other_ttl.id.clone(),
                serde_json::to_string(&other_ttl.entry(HubCounts::default())).expect("json"),
            ),
            ("00000000000000aa".to_string(), go_entry.to_string()),
        ];
        let (entries, _) = a.evaluate(raw, now);
        let matches: std::collections::HashMap<&str, Option<ConfigMatch>> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.config_match))
            .collect();
        assert_eq!(matches[b.name.as_str()], Some(ConfigMatch::Same));
        assert_eq!(
            matches[other_ttl.name.as_str()],
            Some(ConfigMatch::Different)
        );
        assert_eq!(
            matches["go"],
            Some(ConfigMatch::Unknown),
            "a Go entry is unknown, not a mismatch"
        );
    }
}
