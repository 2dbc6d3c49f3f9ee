//! The public listener: `GET /ws?topic=T` and `GET /healthz`. Before the
//! upgrade, in this order: the WebSocket handshake headers (400, or 426 for
//! another version), the topic (400 without one), the admission limits (503,
//! 429), the registry (404 for an unknown topic): cheapest first, so a
//! request that is no handshake takes no admission slot and no registry
//! lookup.
//! `session/` runs each upgraded socket over `conn.rs` (socket I/O) and
//! `codec/` (the RFC 6455 framing, pure); `auth.rs` checks its first frame.
//! Outgoing messages are encoded by `crate::frames`.

mod auth;
mod codec;
mod conn;
mod handshake;
mod limits;
mod log;
mod session;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use self::auth::{check_auth_frame, AuthFailure, UNAUTHORIZED_MESSAGE};
/// The inbound WebSocket decoder, public for the fuzz target.
pub use self::codec::{DecodeError, Decoded, Decoder, Inbound};
use crate::cluster::Mode;
use crate::metrics::Refusal;
use crate::node::Node;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Inbound messages larger than this close the socket with 1009.
pub const MAX_INBOUND_MESSAGE: usize = 4096;

/// The most a public socket's kernel send queue holds that has not been
/// sent yet (`TCP_NOTSENT_LOWAT`, set by the listener at accept). Without
/// it Linux grows the queue (to `tcp_wmem`'s 4 MiB here) for a client that
/// never reads: 1,000 such sockets took 1.5–1.8 GiB of kernel memory, past
/// the host's `tcp_mem` pressure mark, and most of the node's CPU went into
/// copying frames nobody would read. Data in flight is not limited, so a
/// socket that reads is as fast as before; a stuck one now holds this plus
/// what its peer's window took (~210 KiB each, measured).
pub const UNSENT_LIMIT: u32 = 64 * 1024;

pub use self::limits::{Admission, Admissions, Refused};

/// What the public listener's handlers share.
#[derive(Clone)]
struct Public {
    node: Arc<Node>,
    admissions: Arc<Admissions>,
}

/// The public router; also starts the sweeper of per-address state.
pub fn router(node: Arc<Node>) -> Router {
    let admissions = Admissions::new(&node.config().limits);
    node.tasks()
        .spawn(sweep_admissions(Arc::clone(&node), Arc::clone(&admissions)));
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .with_state(Public { node, admissions })
}

async fn sweep_admissions(node: Arc<Node>, admissions: Arc<Admissions>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => admissions.sweep(),
            _ = node.shutdown().cancelled() => return,
        }
    }
}

/// 200 while the node serves sockets. The body says `ok` or `degraded`
/// (configured for a cluster, Redis away); `?strict=1` answers 503 when
/// degraded, for balancers that should avoid such a node.
async fn healthz(State(Public { node, .. }): State<Public>, RawQuery(query): RawQuery) -> Response {
    let degraded = node.mode() == Mode::Degraded;
    let strict = query_value(query.as_deref(), "strict").is_some_and(|v| v == "1" || v == "true");
    let status = if degraded && strict {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = if degraded { "degraded\n" } else { "ok\n" };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn upgrade(
    State(Public { node, admissions }): State<Public>,
    mut request: Request,
) -> Response {
    // The WebSocket headers first: a request that is no handshake costs no
    // admission slot and no registry lookup (a Redis GET in cluster mode).
    let accept = match handshake::accept(request.method(), request.headers()) {
        Ok(accept) => accept,
        Err(not_a_handshake) => return not_a_handshake.into_response(),
    };
    let Some(topic) = query_value(request.uri().query(), "topic").filter(|t| !t.is_empty()) else {
        node.metrics().refused(Refusal::BadRequest);
        return plain(StatusCode::BAD_REQUEST, "missing topic");
    };
    if topic.len() > node.config().limits.max_topic_length {
        node.metrics().refused(Refusal::BadRequest);
        return plain(StatusCode::BAD_REQUEST, "topic too long");
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let client = admissions.client_address(peer, request.headers());
    let admission = match admissions.admit(client) {
        Ok(admission) => admission,
        Err(refused) => {
            node.metrics().refused(Refusal::Limit);
            tracing::debug!(client = %client, ?refused, "connection refused by a limit");
            return match refused {
                Refused::NodeFull => plain(StatusCode::SERVICE_UNAVAILABLE, "server full"),
                Refused::AddressFull | Refused::RateExceeded => {
                    plain(StatusCode::TOO_MANY_REQUESTS, "too many connections")
                }
            };
        }
    };
    let cluster_rate = node.config().limits.cluster_connect_rate_per_ip;
    if cluster_rate > 0 {
        // One Redis round trip; while Redis cannot count, this node's own
        // count of the address stands in.
        let count = match node.cluster_connects(client).await {
            Some(count) => count,
            None => u64::from(admissions.connects_in_window(client)),
        };
        if count > u64::from(cluster_rate) {
            node.metrics().refused(Refusal::Limit);
            tracing::debug!(client = %client, count, "connection refused by the cluster-wide rate limit");
            drop(admission);
            return plain(StatusCode::TOO_MANY_REQUESTS, "too many connections");
        }
    }
    let Some(meta) = node.registry().lookup(&topic).await else {
        node.metrics().refused(Refusal::NotRegistered);
        return plain(StatusCode::NOT_FOUND, "topic not registered");
    };
    node.metrics().upgrades.fetch_add(1, Ordering::Relaxed);
    let on_upgrade = hyper::upgrade::on(&mut request);
    // One task per socket, the upgrade included (one future: an idle
    // socket's memory is mostly its task). No tracing span per socket:
    // entering one on every poll cost ~4 % of the fan-out CPU even with
    // debug logging off.
    node.tasks().spawn(session::run(
        on_upgrade,
        Arc::clone(&node),
        topic,
        meta,
        admission,
    ));
    handshake::switching_protocols(&accept)
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The first value of `name` in a URL query string, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
pub(crate) fn session_future_for_size(node: Arc<Node>) -> impl std::future::Future<Output = ()> {
    let admissions = limits::Admissions::new(&node.config().limits);
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let admission = admissions.admit(client).expect("admitted");
    session::run(
        hyper::upgrade::on(axum::http::Request::new(())),
        node,
        "t".to_string(),
        crate::registry::TopicMeta::default(),
        admission,
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use tower::ServiceExt;

    use super::*;
    use crate::registry::TopicMeta;

    const HANDSHAKE: [(&str, &str); 4] = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// The public router of a fresh node (`extra`: YAML) with topic `t` registered.
    async fn public_router(extra: &str) -> Router {
        let yaml = format!("worker_secret: \"0123456789abcdef0123456789abcdef\"\n{extra}");
        let config = crate::config::Config::from_yaml(&yaml)
            .expect("config")
            .config;
        let node = Node::new(config).expect("node");
        node.registry()
            .register("t", TopicMeta::default())
            .await
            .expect("register");
        router(node)
    }

    /// The status (and `Sec-WebSocket-Version`) that `GET uri` with `headers` gets.
    async fn answer(
        router: &Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<HeaderValue>) {
        let mut request = axum::http::Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::empty()).expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let version = response.headers().get(header::SEC_WEBSOCKET_VERSION);
        (response.status(), version.cloned())
    }

    #[tokio::test]
    async fn the_handshake_is_checked_before_admission_and_the_registry() {
        let router = public_router("limits:\n  connect_rate_per_ip: 1\n").await;
        // Not handshakes: 400 whatever the topic, and no rate-limit slot used.
        for uri in ["/ws?topic=t", "/ws?topic=unknown", "/ws", "/ws?topic=t"] {
            let (status, _) = answer(&router, uri, &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        }
        let mut other_version = HANDSHAKE;
        other_version[2].1 = "8";
        assert_eq!(
            answer(&router, "/ws?topic=unknown", &other_version).await,
            (
                StatusCode::UPGRADE_REQUIRED,
                Some(HeaderValue::from_static("13"))
            )
        );
        let (status, _) = answer(&router, "/ws?topic=t", &HANDSHAKE[..3]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key");
        // Handshakes: then the topic, the limits, the registry, as before.
        let (status, _) = answer(&router, "/ws", &HANDSHAKE).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "no topic");
        let (status, _) = answer(&router, "/ws?topic=t", &HANDSHAKE).await;
        assert_eq!(
            status,
            StatusCode::SWITCHING_PROTOCOLS,
            "this second's one slot"
        );
        let (status, _) = answer(&router, "/ws?topic=unknown", &HANDSHAKE).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "limits before the registry"
        );
        let router = public_router("").await;
        let (status, _) = answer(&router, "/ws?topic=unknown", &HANDSHAKE).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn topic_from_query() {
        assert_eq!(
            query_value(Some("topic=a%2Fb%3Ac%C3%A9"), "topic").as_deref(),
            Some("a/b:cé")
        );
        assert_eq!(query_value(Some("foo=bar"), "topic"), None);
        assert_eq!(query_value(Some("topic="), "topic").as_deref(), Some(""));
        assert_eq!(query_value(None, "topic"), None);
    }
}
