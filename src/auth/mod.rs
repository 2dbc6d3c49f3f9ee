//! Token verification for the WebSocket auth frame: the Go worker's hex HMAC
//! token (`token.rs`) and skywave's HS256 JWT (`jwt.rs`). Pure functions, no
//! I/O; the session calls [`verify`] once per socket.

mod jwt;
mod token;

pub use jwt::{sign_jwt, verify_jwt};
pub use token::{php_json_claims, sign_hex_token, verify_hex_token};

/// Why a token was refused. Every variant reaches the browser as the same
/// `unauthorized` frame; the variant only goes to the debug log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not in a known format")]
    Malformed,
    #[error("signature does not match")]
    BadSignature,
    #[error("claims are not valid")]
    BadClaims,
    #[error("token has expired")]
    Expired,
    #[error("token is for another topic")]
    WrongTopic,
}

impl TokenError {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadClaims => "bad_claims",
            TokenError::Expired => "expired",
            TokenError::WrongTopic => "wrong_topic",
        }
    }
}

/// Verifies `token` for `topic` and returns the user id it carries (0 for
/// none). A token with two dots is a JWT, anything else a hex token.
pub fn verify(secret: &[u8], token: &str, topic: &str, now_unix: i64) -> Result<i64, TokenError> {
    if token.bytes().filter(|b| *b == b'.').count() == 2 {
        verify_jwt(secret, token, topic, now_unix)
    } else {
        verify_hex_token(secret, token, topic, now_unix)
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A user id as PHP may write it: a JSON integer, or a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserId(i64);

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(n) => Ok(UserId(n)),
            Raw::Text(s) => s
                .trim()
                .parse()
                .map(UserId)
                .map_err(|_| serde::de::Error::custom("user id is not an integer")),
        }
    }
}
