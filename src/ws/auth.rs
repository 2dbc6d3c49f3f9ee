//! The first frame of a socket: `{"type":"auth","token":"…"}`. Pure parsing
//! and verification, so it can be unit-tested and fuzzed without a socket.

use crate::auth::{self, TokenError};
use crate::registry::TopicMeta;

pub const UNAUTHORIZED_MESSAGE: &str = "invalid or expired token";

#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The frame is not an auth frame (or lacks a token where one is needed).
    Required(&'static str),
    /// The token was refused.
    Unauthorized(TokenError),
}

/// Checks the auth frame for a socket on `topic`; returns the user id.
pub fn check_auth_frame(
    frame: &[u8],
    topic: &str,
    meta: TopicMeta,
    secret: &[u8],
    now_unix: i64,
) -> Result<i64, AuthFailure> {
    // A map, not a struct: serde would accept a JSON array for a struct.
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(frame)
        .map_err(|_| AuthFailure::Required("the first message must be a JSON auth frame"))?;
    if fields.get("type").and_then(|t| t.as_str()) != Some("auth") {
        return Err(AuthFailure::Required(
            "the first message must be {\"type\":\"auth\",\"token\":\"…\"}",
        ));
    }
    let token = match fields.get("token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(token)) => Some(token.as_str()),
        Some(_) => return Err(AuthFailure::Required("token must be a string")),
    };
    if !meta.require_token {
        // Public topic: any token string, or none at all (skywave extension).
        return match token {
            Some("") => Err(AuthFailure::Required("token must not be empty")),
            _ => Ok(0),
        };
    }
    match token {
        None => Err(AuthFailure::Required("this topic requires a token")),
        Some("") => Err(AuthFailure::Required("token must not be empty")),
        Some(token) => {
            auth::verify(secret, token, topic, now_unix).map_err(AuthFailure::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const PRIVATE: TopicMeta = TopicMeta {
        require_token: true,
    };
    const PUBLIC: TopicMeta = TopicMeta {
        require_token: false,
    };

    fn frame(token: &str) -> Vec<u8> {
        serde_json::json!({ "type": "auth", "token": token })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn auth_required_cases() {
        for bad in [
            &b"hello"[..],
            b"[\"auth\",\"x\"]",
            b"{\"type\":\"subscribe\",\"token\":\"x\"}",
            b"{\"type\":\"auth\",\"token\":\"\"}",
            b"{\"type\":\"auth\"}",
            b"{\"type\":\"auth\",\"token\":5}",
            b"null",
        ] {
            assert!(
                matches!(
                    check_auth_frame(bad, "t", PRIVATE, SECRET, 0),
                    Err(AuthFailure::Required(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tokens_are_verified_on_private_topics() {
        let good = auth::sign_hex_token(SECRET, 9, "t", 100);
        assert_eq!(
            check_auth_frame(&frame(&good), "t", PRIVATE, SECRET, 50),
            Ok(9)
        );
        assert_eq!(
            check_auth_frame(&frame(&good), "t", PRIVATE, SECRET, 101),
            Err(AuthFailure::Unauthorized(TokenError::Expired))
        );
        assert!(matches!(
            check_auth_frame(&frame("junk"), "t", PRIVATE, SECRET, 50),
            Err(AuthFailure::Unauthorized(_))
        ));
    }

    #[test]
    fn public_topics_take_any_token_or_none() {
        assert_eq!(
            check_auth_frame(&frame("junk"), "p", PUBLIC, SECRET, 0),
            Ok(0)
        );
        assert_eq!(
            check_auth_frame(b"{\"type\":\"auth\"}", "p", PUBLIC, SECRET, 0),
            Ok(0)
        );
        let good = auth::sign_hex_token(SECRET, 9, "p", 100);
        // the user id of a valid token is not used on public topics: anonymous
        assert_eq!(
            check_auth_frame(&frame(&good), "p", PUBLIC, SECRET, 0),
            Ok(0)
        );
    }
}
