//! The operator's live dashboard, on the internal listener beside the API.
//! `GET /dashboard` is the login page; its form posts the worker secret in
//! the body (never a URL) to `/dashboard/login`, which opens a session
//! (`session.rs`) and redirects to `/dashboard/live`, the page. The page
//! holds one Server-Sent Events stream, `/dashboard/events` (`feed.rs`),
//! and renders every sample itself. The HTML, CSS and JS are embedded in the
//! binary; a Content-Security-Policy allows exactly them and nothing from
//! elsewhere. Which path needs a session is decided by the API's one guard
//! (`http/mod.rs`), like everything else there.

mod feed;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::error::SeeOther;
use super::ApiError;
use crate::node::Node;

/// A login form is a few dozen bytes; anything far larger is not one.
const MAX_FORM: usize = 4096;

/// What the dashboard's handlers share: the node they show, the sessions,
/// and the roster the open pages share.
#[derive(Clone)]
pub struct Dashboard {
    node: Arc<Node>,
    sessions: Arc<session::Sessions>,
    roster: Arc<feed::RosterCache>,
}

impl Dashboard {
    pub fn new(node: Arc<Node>) -> Dashboard {
        Dashboard {
            node,
            sessions: Arc::default(),
            roster: Arc::default(),
        }
    }

    /// Whether the request carries a live session's cookie.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        self.sessions.admits(headers)
    }

    /// The dashboard's routes; the guard in front of them is the API's.
    pub fn router(self) -> Router {
        Router::new()
            .route("/dashboard", get(login_page))
            .route("/dashboard/login", post(login))
            .route("/dashboard/logout", post(logout))
            .route("/dashboard/live", get(live_page))
            .route("/dashboard/events", get(events))
            .layer(middleware::map_response(page_headers))
            .with_state(self)
    }
}

/// The pages, built once: the stylesheet and the script go inline, and the
/// policy names their hashes.
struct Pages {
    login: String,
    login_refused: String,
    live: String,
    policy: HeaderValue,
}

static PAGES: LazyLock<Pages> = LazyLock::new(|| {
    let style = include_str!("dashboard.css");
    let script = include_str!("dashboard.js");
    let fill = |template: &str, message: &str| {
        template
            .replace("{{style}}", style)
            .replace("{{script}}", script)
            .replace("{{version}}", crate::version())
            .replace("{{message}}", message)
    };
    let login = include_str!("login.html");
    let policy = format!(
        "default-src 'none'; style-src '{}'; script-src '{}'; connect-src 'self'; \
         img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        sha256_source(style),
        sha256_source(script),
    );
    Pages {
        login: fill(login, ""),
        login_refused: fill(
            login,
            r#"<p class="refused" role="alert">Wrong secret.</p>"#,
        ),
        live: fill(include_str!("live.html"), ""),
        policy: HeaderValue::from_str(&policy)
            .expect("the policy is ASCII: hashes in base64 and fixed text"),
    }
});

/// A CSP source expression for an inline element with this text.
fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Every dashboard answer: nothing cached, framed or sniffed, no referrer,
/// and the policy that allows the embedded style and script only.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, PAGES.policy.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The login form, or straight to the page for a browser already logged in.
async fn login_page(State(dashboard): State<Dashboard>, headers: HeaderMap) -> Response {
    if dashboard.admits(&headers) {
        return SeeOther {
            location: "/dashboard/live",
            cookie: None,
        }
        .into_response();
    }
    Html(PAGES.login.as_str()).into_response()
}

async fn login(State(dashboard): State<Dashboard>, request: Request) -> Result<SeeOther, ApiError> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let form = read_form(body, super::body_deadline(&dashboard.node)).await?;
    let mut secrets = form_urlencoded::parse(&form).filter(|(key, _)| key == "secret");
    let given = match (secrets.next(), secrets.next()) {
        (Some((_, given)), None) => given,
        _ => return Err(ApiError::WrongSecret(PAGES.login_refused.as_str())),
    };
    let secret = dashboard.node.config().worker_secret.expose();
    if !super::secret_equals(given.as_bytes(), secret) {
        tracing::info!(peer = %peer, "dashboard login refused: wrong secret");
        return Err(ApiError::WrongSecret(PAGES.login_refused.as_str()));
    }
    let token = dashboard.sessions.open();
    tracing::info!(peer = %peer, "dashboard login");
    Ok(SeeOther {
        location: "/dashboard/live",
        cookie: Some(session::set_cookie(
            &token,
            session::came_over_https(&parts.headers),
        )),
    })
}

async fn logout(State(dashboard): State<Dashboard>, headers: HeaderMap) -> SeeOther {
    dashboard.sessions.close(&headers);
    SeeOther {
        location: "/dashboard",
        cookie: Some(session::clear_cookie(session::came_over_https(&headers))),
    }
}

async fn live_page() -> Html<&'static str> {
    Html(PAGES.live.as_str())
}

async fn events(State(dashboard): State<Dashboard>) -> impl IntoResponse {
    feed::stream(dashboard.node, dashboard.roster)
}

/// The form body, at most [`MAX_FORM`] bytes, within `deadline`.
async fn read_form(body: Body, deadline: std::time::Duration) -> Result<Vec<u8>, ApiError> {
    Ok(super::body::collect(body, MAX_FORM, deadline)
        .await?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_carry_their_style_and_script_and_the_policy_names_them() {
        let policy = PAGES.policy.to_str().expect("ascii");
        let style = sha256_source(include_str!("dashboard.css"));
        let script = sha256_source(include_str!("dashboard.js"));
        assert!(policy.contains(&style) && policy.contains(&script));
        for page in [&PAGES.login, &PAGES.login_refused, &PAGES.live] {
            assert!(!page.contains("{{"), "every placeholder filled");
            assert!(page.contains(&format!("<style>{}</style>", include_str!("dashboard.css"))));
        }
        assert!(PAGES.live.contains(&format!(
            "<script>{}</script>",
            include_str!("dashboard.js")
        )));
        assert!(!PAGES.login.contains("Wrong secret"));
        assert!(PAGES.login_refused.contains("Wrong secret"));
    }
}
