//! Dashboard sessions: a login with the worker secret opens one, a random
//! token the browser keeps in an HttpOnly, SameSite=Strict cookie. Sessions
//! live in this process's memory only (a restart logs everyone out), expire
//! after [`LIFETIME`], and are looked up by the SHA-256 of the token, so the
//! map never holds a usable token and a lookup's timing says nothing about
//! one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub const COOKIE: &str = "skywave_session";
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Logins beyond this many live sessions push out the oldest one.
const MAX_SESSIONS: usize = 64;

type Key = [u8; 32];

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, Instant>>,
}

impl Sessions {
    /// A new session; returns its token (64 hex characters).
    pub fn open(&self) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut live = self.lock();
        live.retain(|_, expires| *expires > now);
        if live.len() >= MAX_SESSIONS {
            let oldest = live
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                live.remove(&oldest);
            }
        }
        live.insert(key(&token), now + LIFETIME);
        token
    }

    /// Whether the request carries the cookie of a live session.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = token(headers) else {
            return false;
        };
        let now = Instant::now();
        self.lock()
            .get(&key(token))
            .is_some_and(|expires| *expires > now)
    }

    /// Ends the request's session, if it has one.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(token) = token(headers) {
            self.lock().remove(&key(token));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `Set-Cookie` value for a new session. `Secure` only when a TLS proxy
/// says the browser came over HTTPS: the internal listener itself speaks
/// plain HTTP, where a `Secure` cookie would never come back.
pub fn set_cookie(token: &str, secure: bool) -> String {
    cookie(token, LIFETIME.as_secs(), secure)
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie(secure: bool) -> String {
    cookie("", 0, secure)
}

/// Whether a proxy in front reports that the browser used HTTPS.
pub fn came_over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; Path=/dashboard; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    )
}

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

/// The session token of the request's `Cookie` header(s), if any.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value.parse().expect("header"));
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_lives_twelve_hours_and_ends_at_logout() {
        let sessions = Sessions::default();
        let token = sessions.open();
        assert_eq!(token.len(), 64);
        let headers = with_cookie(&format!("theme=dark; {COOKIE}={token}"));
        assert!(sessions.admits(&headers));
        assert!(!sessions.admits(&with_cookie(&format!("{COOKIE}={token}0"))));
        assert!(!sessions.admits(&with_cookie(&format!("{COOKIE}="))));
        assert!(!sessions.admits(&HeaderMap::new()));

        tokio::time::advance(LIFETIME - Duration::from_secs(1)).await;
        assert!(sessions.admits(&headers));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!sessions.admits(&headers), "expired");

        let token = sessions.open();
        let headers = with_cookie(&format!("{COOKIE}={token}"));
        assert!(sessions.admits(&headers));
        sessions.close(&headers);
        assert!(!sessions.admits(&headers), "logged out");
    }

    #[tokio::test(start_paused = true)]
    async fn logins_past_the_cap_push_out_the_oldest_session() {
        let sessions = Sessions::default();
        let first = sessions.open();
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 1..MAX_SESSIONS {
            sessions.open();
        }
        assert!(sessions.admits(&with_cookie(&format!("{COOKIE}={first}"))));
        sessions.open();
        assert!(!sessions.admits(&with_cookie(&format!("{COOKIE}={first}"))));
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookie_flags() {
        let cookie = set_cookie("abc", false);
        assert_eq!(
            cookie,
            "skywave_session=abc; Path=/dashboard; Max-Age=43200; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).starts_with("skywave_session=; Path=/dashboard; Max-Age=0;"));
    }
}
