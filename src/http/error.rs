//! The one place that maps internal API outcomes to HTTP status codes. Bodies
//! are short plain text, as the PHP library expects; causes of 5xx go to the
//! log only.

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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
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
        };
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{body}\n"),
        )
            .into_response();
        if let ApiError::MethodNotAllowed(allowed) = self {
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        response
    }
}
