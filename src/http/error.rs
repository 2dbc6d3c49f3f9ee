//! The one place that maps internal API outcomes to HTTP status codes. Bodies
//! are short plain text, as the PHP library expects; causes of 5xx go to the
//! log only. The dashboard's redirects and its refused login (an HTML page)
//! are picked here too.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    NotFound,
    MethodNotAllowed(Method),
    Forbidden,
    BadRequest(&'static str),
    PayloadTooLarge,
    TopicNotRegistered,
    Timeout,
    /// The node cannot serve (`/readyz`; a publish once shutdown has
    /// begun), with the reason as the body.
    NotReady(&'static str),
    /// Redis is up but refused a registry change (kept and retried here).
    RegistryRefused,
    /// The body did not arrive in time (a client fault: 408, not 503).
    BodyTimeout,
    /// A request that arrived after shutdown began (and `Connection: close`).
    ShuttingDown,
    /// A dashboard page without a valid session: to the login page.
    LoginFirst,
    /// The dashboard's event stream without a valid session.
    NoSession,
    /// A login with a wrong (or no) secret; the body is the login page again.
    WrongSecret(&'static str),
}

/// Where the dashboard sends the browser after a form (303: followed with a
/// GET), with the session cookie to set or clear.
pub struct SeeOther {
    pub location: &'static str,
    pub cookie: Option<String>,
}

impl IntoResponse for SeeOther {
    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, HeaderValue::from_static(self.location)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response();
        if let Some(value) = self.cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::LoginFirst => {
                return SeeOther {
                    location: "/dashboard",
                    cookie: None,
                }
                .into_response()
            }
            ApiError::WrongSecret(page) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    *page,
                )
                    .into_response()
            }
            ApiError::NoSession => (StatusCode::UNAUTHORIZED, "login required"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(why) => (StatusCode::BAD_REQUEST, *why),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large (limit 1 MiB)",
            ),
            ApiError::TopicNotRegistered => (StatusCode::NOT_FOUND, "topic not registered"),
            ApiError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "request timed out"),
            ApiError::NotReady(why) => (StatusCode::SERVICE_UNAVAILABLE, *why),
            ApiError::RegistryRefused => (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request body timeout"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{body}\n"),
        )
            .into_response();
        if let ApiError::ShuttingDown = self {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::MethodNotAllowed(allowed) = self {
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        response
    }
}
