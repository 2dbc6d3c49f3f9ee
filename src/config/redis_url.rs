//! `redis_url`: the forms it takes (go-redis's, so a Go config loads
//! unchanged, plus Sentinel and Redis Cluster forms of skywave's own), how it
//! is checked at start-up, how the `redis` crate is given it, and how it is
//! shown without its password.

/// The URL schemes of one Redis server: TCP, TLS, and unix sockets (the
/// forms go-redis reads, so a Go config using any of them loads unchanged).
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "unix", "redis+unix"];

/// What `redis_url` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://`, `rediss://`, `unix://`): the URL as the
    /// `redis` crate reads it.
    Single(String),
    /// A Sentinel set watching one master:
    /// `redis+sentinel://[user:pass@]h1:26379,h2:26379/<master>[/<db>]`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        auth: Credentials,
        tls: bool,
    },
    /// A Redis Cluster, found from seed nodes:
    /// `redis+cluster://[user:pass@]h1:6379,h2:6379`.
    Cluster {
        seeds: Vec<(String, u16)>,
        auth: Credentials,
        tls: bool,
    },
}

/// User name and password of the URL (percent-decoded); empty = none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisTarget {
    /// Reads `url`; the error names what is wrong, password redacted.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(not_a_redis_url(url));
        };
        let (tls, cluster) = match scheme {
            "redis+sentinel" => (false, false),
            "rediss+sentinel" => (true, false),
            "redis+cluster" => (false, true),
            "rediss+cluster" => (true, true),
            _ if REDIS_SCHEMES.contains(&scheme) => {
                let normalized = normalize_redis_url(url);
                redis::Client::open(normalized.as_str())
                    .map_err(|error| format!("{:?} is malformed: {error}", redact_url(url)))?;
                return Ok(RedisTarget::Single(normalized));
            }
            _ => return Err(not_a_redis_url(url)),
        };
        let shown = redact_url(url);
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let auth = match userinfo {
            None => Credentials::default(),
            Some(userinfo) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (userinfo, None),
                };
                let decode = |text: &str| {
                    percent_decode(text).ok_or_else(|| {
                        format!("{shown:?}: bad percent-encoding in the credentials")
                    })
                };
                Credentials {
                    username: (!user.is_empty()).then(|| decode(user)).transpose()?,
                    password: pass.map(decode).transpose()?.filter(|p| !p.is_empty()),
                }
            }
        };
        let (hosts, path) = match rest.split_once('/') {
            Some((hosts, path)) => (hosts, path),
            None => (rest, ""),
        };
        let default_port = if cluster { 6379 } else { 26379 };
        let mut nodes = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            nodes.push(host_port(host, default_port).map_err(|e| format!("{shown:?}: {e}"))?);
        }
        if nodes.is_empty() {
            return Err(format!("{shown:?} names no host"));
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if cluster {
            return match segments.as_slice() {
                [] | ["0"] => Ok(RedisTarget::Cluster {
                    seeds: nodes,
                    auth,
                    tls,
                }),
                _ => Err(format!(
                    "{shown:?}: a Redis Cluster has database 0 only; give seed nodes, no path                      (redis+cluster://[user:pass@]host1:6379,host2:6379)"
                )),
            };
        }
        let (master, db) = match segments.as_slice() {
            [master] => (*master, 0),
            [master, db] => (
                *master,
                db.parse::<i64>()
                    .ok()
                    .filter(|db| *db >= 0)
                    .ok_or_else(|| format!("{shown:?}: database {db:?} is not a number"))?,
            ),
            _ => {
                return Err(format!(
                    "{shown:?} needs the master's name:                      redis+sentinel://[user:pass@]host1:26379,host2:26379/<master>[/<db>]"
                ))
            }
        };
        Ok(RedisTarget::Sentinel {
            sentinels: nodes,
            master: master.to_string(),
            db,
            auth,
            tls,
        })
    }

    /// TLS to the servers (`rediss…`).
    pub fn tls(&self) -> bool {
        match self {
            RedisTarget::Single(url) => url.starts_with("rediss://"),
            RedisTarget::Sentinel { tls, .. } | RedisTarget::Cluster { tls, .. } => *tls,
        }
    }
}

fn not_a_redis_url(url: &str) -> String {
    format!(
        "{:?} is not a Redis URL (expected redis://[user:pass@]host:port/db, rediss://… for \
         TLS, unix:///path/to/redis.sock?db=N, redis+sentinel://[user:pass@]host1:26379,\
         host2:26379/<master>[/<db>] or redis+cluster://[user:pass@]host1:6379,host2:6379; \
         rediss+sentinel:// and rediss+cluster:// for TLS)",
        redact_url(url)
    )
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{text:?}: empty host"));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: bad port"))?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

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
    RedisTarget::parse(url).map(|_| ())
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
