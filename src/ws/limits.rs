//! Admission control for the public listener, before the upgrade: the
//! node-wide socket cap (503), and per client address a socket cap and a
//! connection rate (429). The client address is the TCP peer, or the address
//! a trusted proxy reports in `X-Forwarded-For` / `X-Real-IP`.
//!
//! A socket holds an [`Admission`] for its whole life; dropping it releases
//! the counts, and an address's state is freed once its last socket is gone
//! and its rate window has passed.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;

use crate::config::Limits;

const RATE_WINDOW: Duration = Duration::from_secs(1);

pub struct Admissions {
    max_sockets: usize,
    max_per_ip: usize,
    rate_per_ip: u32,
    trusted_proxies: Vec<ipnet::IpNet>,
    sockets: AtomicUsize,
    per_ip: DashMap<IpAddr, PerAddress>,
}

struct PerAddress {
    sockets: usize,
    window_start: Instant,
    connects_in_window: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `limits.max_sockets` already (503).
    NodeFull,
    /// The address holds `limits.max_sockets_per_ip` already (429).
    AddressFull,
    /// The address opened `limits.connect_rate_per_ip` sockets this second (429).
    RateExceeded,
}

/// One admitted socket; releases its counts on drop.
pub struct Admission {
    admissions: Arc<Admissions>,
    client: IpAddr,
}

impl Admissions {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Admissions {
            max_sockets: limits.max_sockets,
            max_per_ip: limits.max_sockets_per_ip,
            rate_per_ip: limits.connect_rate_per_ip,
            trusted_proxies: limits.trusted_proxies.clone(),
            sockets: AtomicUsize::new(0),
            per_ip: DashMap::new(),
        })
    }

    /// The client address: the peer, unless the peer is a trusted proxy that
    /// says who its client is.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        // The rightmost address not added by one of our own proxies.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        if let Some(client) = forwarded.iter().rev().find(|a| !self.is_trusted(**a)) {
            return *client;
        }
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }

    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admission, Refused> {
        if self.max_sockets > 0 && self.sockets.load(Ordering::Relaxed) >= self.max_sockets {
            return Err(Refused::NodeFull);
        }
        let now = Instant::now();
        let mut entry = self.per_ip.entry(client).or_insert_with(|| PerAddress {
            sockets: 0,
            window_start: now,
            connects_in_window: 0,
        });
        if now.duration_since(entry.window_start) >= RATE_WINDOW {
            entry.window_start = now;
            entry.connects_in_window = 0;
        }
        if self.max_per_ip > 0 && entry.sockets >= self.max_per_ip {
            return Err(Refused::AddressFull);
        }
        if self.rate_per_ip > 0 && entry.connects_in_window >= self.rate_per_ip {
            return Err(Refused::RateExceeded);
        }
        entry.connects_in_window += 1;
        entry.sockets += 1;
        drop(entry);
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            admissions: Arc::clone(self),
            client,
        })
    }

    /// Connects of `client` in its current one-second window (this node).
    pub fn connects_in_window(&self, client: IpAddr) -> u32 {
        self.per_ip
            .get(&client)
            .map_or(0, |entry| entry.connects_in_window)
    }

    /// Frees the state of addresses with no socket whose rate window passed.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.per_ip
            .retain(|_, e| e.sockets > 0 || now.duration_since(e.window_start) < RATE_WINDOW);
    }

    /// Addresses with state held (for the leak checks).
    pub fn tracked_addresses(&self) -> usize {
        self.per_ip.len()
    }
}

impl Admission {
    /// The client's address the slot is counted for.
    pub fn client(&self) -> IpAddr {
        self.client
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admissions.sockets.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        self.admissions.per_ip.remove_if_mut(&self.client, |_, e| {
            e.sockets = e.sockets.saturating_sub(1);
            e.sockets == 0 && now.duration_since(e.window_start) >= RATE_WINDOW
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, rate: u32, proxies: &[&str]) -> Limits {
        Limits {
            max_sockets: max,
            max_sockets_per_ip: per_ip,
            connect_rate_per_ip: rate,
            trusted_proxies: proxies
                .iter()
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .expect("ip or range")
                })
                .collect(),
            ..Limits::default()
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn caps_and_release() {
        let admissions = Admissions::new(&limits(3, 2, 0, &[]));
        let a1 = admissions.admit(A).expect("first");
        let _a2 = admissions.admit(A).expect("second");
        assert_eq!(admissions.admit(A).err(), Some(Refused::AddressFull));
        let _b1 = admissions.admit(B).expect("other address");
        assert_eq!(admissions.admit(B).err(), Some(Refused::NodeFull));
        drop(a1);
        assert!(admissions.admit(B).is_ok());
    }

    #[test]
    fn rate_limit_per_address_and_state_is_freed() {
        let admissions = Admissions::new(&limits(0, 0, 2, &[]));
        drop(admissions.admit(A).expect("1"));
        drop(admissions.admit(A).expect("2"));
        assert_eq!(admissions.admit(A).err(), Some(Refused::RateExceeded));
        assert!(admissions.admit(B).is_ok());
        std::thread::sleep(RATE_WINDOW);
        admissions.sweep();
        assert_eq!(admissions.tracked_addresses(), 0);
        assert!(admissions.admit(A).is_ok());
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let admissions = Admissions::new(&limits(0, 0, 0, &["127.0.0.1"]));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.7, 127.0.0.1".parse().expect("h"),
        );
        let proxy: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            admissions.client_address(proxy, &headers),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(admissions.client_address(A, &headers), A);
        let mut real = HeaderMap::new();
        real.insert("x-real-ip", "198.51.100.9".parse().expect("h"));
        assert_eq!(
            admissions.client_address(proxy, &real),
            "198.51.100.9".parse::<IpAddr>().expect("ip")
        );
        real.insert("x-real-ip", "garbage".parse().expect("h"));
        assert_eq!(admissions.client_address(proxy, &real), proxy);
    }

    #[test]
    fn trusted_proxies_may_be_ranges() {
        let admissions = Admissions::new(&limits(0, 0, 0, &["10.0.0.0/8", "fd00::/8"]));
        let mut headers = HeaderMap::new();
        // The last address not in a trusted range is the client.
        headers.insert(
            "x-forwarded-for",
            "198.51.100.7, 10.1.2.3".parse().expect("h"),
        );
        let inner: IpAddr = "10.9.8.7".parse().expect("ip");
        assert_eq!(
            admissions.client_address(inner, &headers),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        let v6: IpAddr = "fd12::1".parse().expect("ip");
        assert_eq!(
            admissions.client_address(v6, &headers),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        let outside: IpAddr = "11.0.0.1".parse().expect("ip");
        assert_eq!(admissions.client_address(outside, &headers), outside);
    }
}
