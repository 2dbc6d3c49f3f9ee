//! HS256 JWTs signed with `worker_secret` (a skywave extension): claims
//! `topic` (must match), `exp` (required), `user_id` or `sub` (optional
//! integer user id). Only HS256 is accepted, so `alg: none` and algorithm
//! confusion are refused by construction.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{TokenError, UserId};

#[derive(serde::Deserialize)]
struct JwtClaims {
    topic: String,
    exp: i64,
    #[serde(default)]
    user_id: Option<UserId>,
    #[serde(default)]
    sub: Option<UserId>,
}

/// Verifies a JWT for `topic` at `now_unix`; returns its user id (0 if none).
pub fn verify_jwt(
    secret: &[u8],
    token: &str,
    topic: &str,
    now_unix: i64,
) -> Result<i64, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    // Expiry is checked below against the caller's clock, so tests can pin it.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let data =
        jsonwebtoken::decode::<JwtClaims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_) => TokenError::BadClaims,
                _ => TokenError::Malformed,
            })?;
    let claims = data.claims;
    if now_unix > claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.topic != topic {
        return Err(TokenError::WrongTopic);
    }
    Ok(claims.user_id.or(claims.sub).map_or(0, |id| id.0))
}

/// Signs an HS256 JWT (for `skywave token --jwt` and tests).
pub fn sign_jwt(secret: &[u8], user_id: i64, topic: &str, exp: i64) -> Result<String, TokenError> {
    let claims = serde_json::json!({ "topic": topic, "exp": exp, "user_id": user_id });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(data: &[u8]) -> String {
        use std::fmt::Write;
        // base64url without padding, small and local to the tests
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = out.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn round_trip() {
        let token = sign_jwt(SECRET, 11, "t", 1_000).expect("signs");
        assert_eq!(verify_jwt(SECRET, &token, "t", 999), Ok(11));
        assert_eq!(
            verify_jwt(SECRET, &token, "t", 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_jwt(SECRET, &token, "u", 999),
            Err(TokenError::WrongTopic)
        );
        assert_eq!(
            verify_jwt(b"k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k", &token, "t", 999),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn refuses_alg_none_and_missing_exp() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(br#"{"topic":"t","exp":9999999999}"#);
        assert!(verify_jwt(SECRET, &format!("{header}.{payload}."), "t", 0).is_err());
        let claims = serde_json::json!({ "topic": "t", "user_id": 1 });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs");
        assert_eq!(
            verify_jwt(SECRET, &token, "t", 0),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn sub_is_a_user_id() {
        let claims = serde_json::json!({ "topic": "t", "exp": 10, "sub": "77" });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs");
        assert_eq!(verify_jwt(SECRET, &token, "t", 5), Ok(77));
    }
}
