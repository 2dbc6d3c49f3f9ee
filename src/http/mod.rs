//! The internal listener: the HTTP API the publisher (PHP) calls, plus
//! `/readyz`, `/metrics` and the operator's dashboard (`dashboard/`). Every
//! request passes one guard, in the Go worker's order: wrong method -> 405,
//! missing or wrong secret -> 403 (for everything under `/internal/`; the
//! probes and the Prometheus scrape need none and show nothing secret; the
//! dashboard's page and stream need a session cookie instead); the handlers
//! then read the body (1 MiB cap -> 413, bad JSON -> 400).

mod body;
mod dashboard;
mod error;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use self::dashboard::Dashboard;
pub use self::error::ApiError;
use crate::cluster::Mode;
use crate::node::{Node, PublishError, StatusRequest};

pub const SECRET_HEADER: &str = "x-worker-secret";

pub fn router(node: Arc<Node>) -> Router {
    let dashboard = Dashboard::new(Arc::clone(&node));
    let gate = (Arc::clone(&node), dashboard.clone());
    Router::new()
        .route("/internal/register", post(register))
        .route("/internal/unregister", post(unregister))
        .route("/internal/publish", post(publish))
        .route("/internal/push", post(publish))
        .route("/internal/status", get(status))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
        .merge(dashboard.router())
        .layer(middleware::from_fn_with_state(gate, guard))
        // A 503 from /readyz is an answer, not a failure of the server:
        // failures are logged where they happen, the trace layer only at debug.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

/// What a caller must show to reach a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `X-Worker-Secret`: the publisher's API.
    Secret,
    /// Nothing, even during shutdown: the readiness probe and the Prometheus
    /// scrape, which carry aggregates only.
    Open,
    /// Nothing: the dashboard's login page and its forms.
    Login,
    /// A dashboard session, else a redirect to the login page.
    Page,
    /// A dashboard session, else 401: the event stream.
    Feed,
}

/// The paths served, with the method each takes; unknown paths are 404
/// before anything else.
static ROUTES: [(&str, Method, Access); 12] = [
    ("/internal/register", Method::POST, Access::Secret),
    ("/internal/unregister", Method::POST, Access::Secret),
    ("/internal/publish", Method::POST, Access::Secret),
    ("/internal/push", Method::POST, Access::Secret),
    ("/internal/status", Method::GET, Access::Secret),
    ("/readyz", Method::GET, Access::Open),
    ("/metrics", Method::GET, Access::Open),
    ("/dashboard", Method::GET, Access::Login),
    ("/dashboard/login", Method::POST, Access::Login),
    ("/dashboard/logout", Method::POST, Access::Login),
    ("/dashboard/live", Method::GET, Access::Page),
    ("/dashboard/events", Method::GET, Access::Feed),
];

fn route(path: &str) -> Option<&'static (&'static str, Method, Access)> {
    ROUTES.iter().find(|(known, _, _)| *known == path)
}

async fn guard(
    State((node, dashboard)): State<(Arc<Node>, Dashboard)>,
    request: Request,
    next: Next,
) -> Response {
    node.metrics().api_requests.fetch_add(1, Ordering::Relaxed);
    let Some((path, allowed, access)) = route(request.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    if request.method() != allowed {
        return ApiError::MethodNotAllowed(allowed.clone()).into_response();
    }
    let headers = request.headers();
    let refused = match access {
        Access::Secret => (!secret_matches(headers, node.config().worker_secret.expose()))
            .then_some(ApiError::Forbidden),
        Access::Page => (!dashboard.admits(headers)).then_some(ApiError::LoginFirst),
        Access::Feed => (!dashboard.admits(headers)).then_some(ApiError::NoSession),
        Access::Open | Access::Login => None,
    };
    if let Some(refused) = refused {
        return refused.into_response();
    }
    if node.is_stopping() && *access != Access::Open {
        // Answered, never reset: the publisher learns this node is going.
        return ApiError::ShuttingDown.into_response();
    }
    if declared_too_large(request.headers()) {
        return ApiError::PayloadTooLarge.into_response();
    }
    match tokio::time::timeout(node.config().limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                path,
                timeout = ?node.config().limits.request_timeout,
                "internal API request timed out"
            );
            ApiError::Timeout.into_response()
        }
    }
}

/// A body must arrive within half the request's time, so that a trickling
/// client gets its 408 well before the request deadline's 503.
fn body_deadline(node: &Node) -> std::time::Duration {
    node.config().limits.request_timeout / 2
}

/// A declared `Content-Length` over the cap is refused before reading.
fn declared_too_large(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .is_some_and(|length| length > body::MAX_BODY as u64)
}

/// Constant-time comparison; an empty or missing header never matches.
fn secret_matches(headers: &HeaderMap, secret: &str) -> bool {
    headers
        .get(SECRET_HEADER)
        .is_some_and(|given| secret_equals(given.as_bytes(), secret))
}

/// Constant-time comparison of a secret given by a caller (header or login
/// form); an empty one never matches.
fn secret_equals(given: &[u8], secret: &str) -> bool {
    !given.is_empty() && given.ct_eq(secret.as_bytes()).into()
}

async fn register(State(node): State<Arc<Node>>, body: Body) -> Result<&'static str, ApiError> {
    let request = body::read(body, body_deadline(&node)).await?;
    let topic = request.topic(node.config().limits.max_topic_length)?;
    let meta = request.meta()?;
    node.registry()
        .register(&topic, meta)
        .await
        .map_err(|_| ApiError::RegistryRefused)?;
    Ok("ok\n")
}

async fn unregister(State(node): State<Arc<Node>>, body: Body) -> Result<&'static str, ApiError> {
    let request = body::read(body, body_deadline(&node)).await?;
    let topic = request.topic(node.config().limits.max_topic_length)?;
    node.registry()
        .unregister(&topic)
        .await
        .map_err(|_| ApiError::RegistryRefused)?;
    Ok("ok\n")
}

async fn publish(State(node): State<Arc<Node>>, body: Body) -> Result<&'static str, ApiError> {
    let started = Instant::now();
    let mut request = body::read(body, body_deadline(&node)).await?;
    let topic = request.topic(node.config().limits.max_topic_length)?;
    let payload = request.take_payload()?;
    let result = node.publish(topic, payload).await;
    node.metrics().observe_publish(started.elapsed());
    match result {
        Ok(accepted) => {
            hand_over_after_answer(accepted);
            Ok("ok\n")
        }
        Err(PublishError::NotRegistered) => Err(ApiError::TopicNotRegistered),
        Err(PublishError::ShuttingDown) => Err(ApiError::NotReady("shutting down")),
    }
}

/// Hands a publish to the fan-out once its answer is written. On the
/// internal API's runtime (one thread, see `app`) a task spawned here runs
/// after the connection task has written the answer and waits for the next
/// request, and such tasks run in the order they were spawned: publishes
/// keep the order they were answered in. On any other runtime (a worker
/// thread may take a spawned task ahead of an earlier one) it is handed
/// over at once. Never lost: a task dropped with its runtime hands it over
/// as it goes (see `dispatch::Accepted`).
fn hand_over_after_answer(mut accepted: crate::dispatch::Accepted) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let one_thread = Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if accepted.is_held() && one_thread {
        tokio::spawn(async move { drop(accepted) });
    } else {
        accepted.hand_over();
    }
}

async fn status(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let flag = |name: &str| {
        query.as_deref().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == name && v != "0" && v != "false")
        })
    };
    // `?nodes=1` (skywave before Go 0.3.0) is still accepted: the roster is
    // in every answer now.
    let after = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "after")
            .map(|(_, v)| v.into_owned())
    });
    let request = StatusRequest {
        topic_lists: flag("topics"),
        topics_after: after,
        uptime_seconds: false,
    };
    Json(node.status(request).await).into_response()
}

/// Go 0.3.0's readiness: 200 while the node can serve; 503 while a
/// configured Redis is unreachable (degraded) and once shutdown has begun.
async fn readyz(State(node): State<Arc<Node>>) -> Result<&'static str, ApiError> {
    if node.is_stopping() {
        return Err(ApiError::NotReady("shutting down"));
    }
    match node.mode() {
        Mode::Degraded => Err(ApiError::NotReady("redis not connected")),
        Mode::Single | Mode::Cluster => Ok("ok\n"),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let text = node.metrics().render(&node.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        let mut headers = HeaderMap::new();
        assert!(!secret_matches(&headers, "s3cret"));
        headers.insert(SECRET_HEADER, "".parse().expect("header"));
        assert!(!secret_matches(&headers, ""));
        headers.insert(SECRET_HEADER, "s3cret".parse().expect("header"));
        assert!(secret_matches(&headers, "s3cret"));
        assert!(!secret_matches(&headers, "s3cre"));
        assert!(!secret_matches(&headers, "S3CRET"));
    }
}
