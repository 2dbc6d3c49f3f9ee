//! `redis_url`: the forms it takes (go-redis's, so a Go config loads
//! unchanged), how it is checked at start-up, how the `redis` crate is given
//! it, and how it is shown without its password.

/// The URL schemes `redis_url` takes: TCP, TLS, and unix sockets (the forms
/// go-redis reads, so a Go config using any of them loads unchanged).
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

/// `redis://user:secret@host/0` -> `redis://user:***@host/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// Why `url` cannot be used, with the password redacted.
pub(super) fn validate_redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|scheme| REDIS_SCHEMES.contains(&scheme)) {
        return Err(format!(
            "{:?} is not a Redis URL (expected redis://[user:pass@]host:port/db, rediss://… \
             for TLS, or unix:///path/to/redis.sock?db=N)",
            redact_url(url)
        ));
    }
    redis::Client::open(normalize_redis_url(url).as_str())
        .map(|_| ())
        .map_err(|error| format!("{:?} is malformed: {error}", redact_url(url)))
}

/// The URL as the `redis` crate reads it. go-redis writes a unix socket's
/// credentials as `unix://user:pass@/path`; the `redis` crate takes them as
/// `?user=`/`?pass=` query parameters, so they are moved there.
pub fn normalize_redis_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if !matches!(scheme, "unix" | "redis+unix") {
        return url.to_string();
    }
    let Some((userinfo, path)) = rest.split_once("@/") else {
        return url.to_string();
    };
    let (user, pass) = match userinfo.split_once(':') {
        Some((user, pass)) => (user, Some(pass)),
        None => (userinfo, None),
    };
    let mut query = Vec::new();
    if !user.is_empty() {
        query.push(format!("user={user}"));
    }
    if let Some(pass) = pass {
        query.push(format!("pass={pass}"));
    }
    let separator = if path.contains('?') { '&' } else { '?' };
    if query.is_empty() {
        format!("{scheme}:///{path}")
    } else {
        format!("{scheme}:///{path}{separator}{}", query.join("&"))
    }
}
