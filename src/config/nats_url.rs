//! `nats_url`: one or more NATS servers, comma-separated, in the forms the
//! NATS clients take: `nats://[user:password@|token@]host[:4222]`, `tls://…`
//! for TLS, and further servers as `host:port` or their own URL
//! (`nats://u:p@h1:4222,h2:4222,h3:4222`). The credentials of the first
//! server are the fleet's; the client library would ignore them in a URL,
//! so they are taken out here and given as connect options.

use super::Secret;

/// Default client port of a NATS server.
const DEFAULT_PORT: u16 = 4222;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword { user: String, password: Secret },
    Token(Secret),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTarget {
    /// `nats://host:port` or `tls://host:port`, without credentials.
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    /// Any server given as `tls://`: TLS is required on every connection.
    pub tls: bool,
}

impl NatsTarget {
    pub fn parse(url: &str) -> Result<NatsTarget, String> {
        let mut servers = Vec::new();
        let mut auth = NatsAuth::None;
        let mut tls = false;
        for (index, part) in url.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err("has an empty server between commas".to_string());
            }
            let (scheme, rest) = match part.split_once("://") {
                Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
                None if index > 0 => ("nats".to_string(), part),
                None => {
                    return Err(format!(
                        "{:?} is not a NATS URL: expected nats://host:4222 or tls://host:4222",
                        super::redact_url(part)
                    ))
                }
            };
            match scheme.as_str() {
                "nats" => {}
                "tls" => tls = true,
                other => {
                    return Err(format!(
                        "scheme {other}:// is not a NATS scheme (nats:// or tls://)"
                    ))
                }
            }
            let (userinfo, hostport) = match rest.rsplit_once('@') {
                Some((userinfo, hostport)) => (Some(userinfo), hostport),
                None => (None, rest),
            };
            let hostport = hostport.trim_end_matches('/');
            if let Some(userinfo) = userinfo {
                let found = match userinfo.split_once(':') {
                    Some((user, password)) => NatsAuth::UserPassword {
                        user: decode(user),
                        password: Secret::new(decode(password)),
                    },
                    None => NatsAuth::Token(Secret::new(decode(userinfo))),
                };
                if auth != NatsAuth::None && auth != found {
                    return Err(
                        "gives different credentials for different servers; a fleet has one"
                            .to_string(),
                    );
                }
                auth = found;
            }
            servers.push(format!("{scheme}://{}", host_port(hostport)?));
        }
        Ok(NatsTarget { servers, auth, tls })
    }
}

/// `host[:port]` checked (a port that parses, a host that is not empty),
/// with the default port added.
fn host_port(text: &str) -> Result<String, String> {
    if text.contains('/') || text.contains('?') {
        return Err(format!(
            "{text:?}: a NATS server is host:port, without a path or query"
        ));
    }
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 address without a port: `[::1]`.
        Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
        _ => (text, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{text:?} has no host"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: port {port:?} is not a port number"))?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{host}:{port}"))
}

/// Percent-decoding of URL credentials (`p%40ss` is `p@ss`).
fn decode(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            if let Some(value) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(byte);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `nats_url` as shown: every server, credentials hidden.
pub fn redact_nats_url(url: &str) -> String {
    url.split(',')
        .map(|part| super::redact_url(part.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_with_a_user_and_password() {
        let t = NatsTarget::parse("nats://app:p%40ss@nats.example:4223").expect("parses");
        assert_eq!(t.servers, ["nats://nats.example:4223"]);
        assert_eq!(
            t.auth,
            NatsAuth::UserPassword {
                user: "app".into(),
                password: Secret::new("p@ss")
            }
        );
        assert!(!t.tls);
    }

    #[test]
    fn several_servers_a_token_and_default_ports() {
        let t = NatsTarget::parse("tls://s3cr3t@n1, n2:4333 ,tls://n3").expect("parses");
        assert_eq!(
            t.servers,
            ["tls://n1:4222", "nats://n2:4333", "tls://n3:4222"]
        );
        assert_eq!(t.auth, NatsAuth::Token(Secret::new("s3cr3t")));
        assert!(t.tls);
        let v6 = NatsTarget::parse("nats://[::1]:4222,[::1]").expect("parses");
        assert_eq!(v6.servers, ["nats://[::1]:4222", "nats://[::1]:4222"]);
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        for (url, says) in [
            ("redis://h:6379", "not a NATS scheme"),
            ("h1:4222", "not a NATS URL"),
            ("nats://h1:4222,,h2", "empty server"),
            ("nats://:4222", "no host"),
            ("nats://h1:99999", "not a port number"),
            ("nats://h1:4222/x", "without a path"),
            ("nats://a:b@h1,nats://c:d@h2", "different credentials"),
        ] {
            let error = NatsTarget::parse(url).expect_err(url);
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn shown_without_secrets() {
        assert_eq!(
            redact_nats_url("nats://app:pw@h1:4222,h2:4222"),
            "nats://app:***@h1:4222,h2:4222"
        );
        assert_eq!(redact_nats_url("tls://tok@h1"), "tls://***@h1");
    }
}
