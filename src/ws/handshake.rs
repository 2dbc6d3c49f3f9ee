//! The WebSocket opening handshake (RFC 6455 section 4.2), answered by
//! skywave itself rather than a WebSocket library, so that the upgraded
//! stream goes straight to `conn.rs` and the codec.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request is not a WebSocket handshake we accept.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAHandshake {
    NotUpgrade,
    Version,
    MissingKey,
}

impl IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        match self {
            NotAHandshake::NotUpgrade => (
                StatusCode::BAD_REQUEST,
                plain,
                "expected a WebSocket upgrade",
            )
                .into_response(),
            NotAHandshake::MissingKey => {
                (StatusCode::BAD_REQUEST, plain, "missing Sec-WebSocket-Key").into_response()
            }
            NotAHandshake::Version => (
                StatusCode::UPGRADE_REQUIRED,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::SEC_WEBSOCKET_VERSION, "13"),
                ],
                "unsupported WebSocket version",
            )
                .into_response(),
        }
    }
}

/// Checks the upgrade request; returns the `Sec-WebSocket-Accept` value.
pub fn accept(method: &Method, headers: &HeaderMap) -> Result<String, NotAHandshake> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
    {
        return Err(NotAHandshake::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(NotAHandshake::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or(NotAHandshake::MissingKey)?;
    Ok(accept_key(key))
}

pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// The 101 answer that completes the handshake.
pub fn switching_protocols(accept: &str) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn request_checks() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            accept(&Method::GET, &headers),
            Err(NotAHandshake::NotUpgrade)
        );
        headers.insert(
            header::CONNECTION,
            "keep-alive, Upgrade".parse().expect("h"),
        );
        headers.insert(header::UPGRADE, "WebSocket".parse().expect("h"));
        assert_eq!(accept(&Method::GET, &headers), Err(NotAHandshake::Version));
        headers.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().expect("h"));
        assert_eq!(
            accept(&Method::GET, &headers),
            Err(NotAHandshake::MissingKey)
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().expect("h"),
        );
        assert_eq!(
            accept(&Method::GET, &headers).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(
            accept(&Method::POST, &headers),
            Err(NotAHandshake::NotUpgrade)
        );
    }
}
