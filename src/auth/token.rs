//! The Go worker's token: `hex(json claims) "." hex(HMAC-SHA256(secret, hex))`.
//!
//! The MAC covers the hex string, not the decoded JSON, and the JSON is taken
//! as PHP's `json_encode` wrote it (`\/` and `\u00e9` escapes included), so
//! the encoded part is verified byte for byte and only then decoded.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{TokenError, UserId};

type HmacSha256 = Hmac<Sha256>;

#[derive(serde::Deserialize)]
struct HexClaims {
    user_id: UserId,
    topic: String,
    expires: i64,
}

/// Verifies a hex token for `topic` at `now_unix`; returns its user id.
pub fn verify_hex_token(
    secret: &[u8],
    token: &str,
    topic: &str,
    now_unix: i64,
) -> Result<i64, TokenError> {
    let (encoded, signature_hex) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if encoded.is_empty() || signature_hex.len() != 64 {
        return Err(TokenError::Malformed);
    }
    let signature = hex::decode(signature_hex).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::BadSignature)?;
    mac.update(encoded.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let json = hex::decode(encoded).map_err(|_| TokenError::BadClaims)?;
    let claims: HexClaims = serde_json::from_slice(&json).map_err(|_| TokenError::BadClaims)?;
    if now_unix > claims.expires {
        return Err(TokenError::Expired);
    }
    if claims.topic != topic {
        return Err(TokenError::WrongTopic);
    }
    Ok(claims.user_id.0)
}

/// Signs a hex token exactly as the PHP library does.
pub fn sign_hex_token(secret: &[u8], user_id: i64, topic: &str, expires: i64) -> String {
    let encoded = hex::encode(php_json_claims(user_id, topic, expires));
    let signature = match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(encoded.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => String::new(),
    };
    format!("{encoded}.{signature}")
}

/// The claims JSON as PHP's `json_encode` writes it: `/` as `\/`, every
/// non-ASCII character as a `\uXXXX` escape (UTF-16 surrogate pairs above
/// the BMP), fields in the PHP library's order.
pub fn php_json_claims(user_id: i64, topic: &str, expires: i64) -> String {
    let mut out = String::with_capacity(topic.len() + 64);
    out.push_str(&format!("{{\"user_id\":{user_id},\"topic\":\""));
    for c in topic.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push_str(&format!("\",\"expires\":{expires}}}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Written by hand from PHP:
    /// `$e = bin2hex(json_encode(["user_id"=>42,"topic"=>"qso/live:é","expires"=>2000000000]));`
    /// `$t = $e . "." . hash_hmac("sha256", $e, "0123456789abcdef0123456789abcdef");`
    /// json_encode gives `{"user_id":42,"topic":"qso\/live:\u00e9","expires":2000000000}`.
    const PHP_ENCODED: &str = "7b22757365725f6964223a34322c22746f706963223a2271736f5c2f6c6976653a5c7530306539222c2265787069726573223a323030303030303030307d";

    #[test]
    fn php_json_matches_json_encode() {
        let json = php_json_claims(42, "qso/live:é", 2_000_000_000);
        assert_eq!(
            json,
            r#"{"user_id":42,"topic":"qso\/live:\u00e9","expires":2000000000}"#
        );
        assert_eq!(hex::encode(&json), PHP_ENCODED);
        assert_eq!(
            php_json_claims(1, "📻", 5),
            r#"{"user_id":1,"topic":"\ud83d\udcfb","expires":5}"#
        );
    }

    #[test]
    fn php_vector_verifies() {
        let mut mac = HmacSha256::new_from_slice(SECRET).expect("key");
        mac.update(PHP_ENCODED.as_bytes());
        let token = format!("{PHP_ENCODED}.{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            token,
            sign_hex_token(SECRET, 42, "qso/live:é", 2_000_000_000)
        );
        assert_eq!(
            verify_hex_token(SECRET, &token, "qso/live:é", 1_900_000_000),
            Ok(42)
        );
        // valid until and including the expiry second
        assert_eq!(
            verify_hex_token(SECRET, &token, "qso/live:é", 2_000_000_000),
            Ok(42)
        );
    }

    #[test]
    fn refusals() {
        let token = sign_hex_token(SECRET, 7, "t", 100);
        assert_eq!(
            verify_hex_token(SECRET, &token, "t", 101),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_hex_token(SECRET, &token, "u", 50),
            Err(TokenError::WrongTopic)
        );
        assert_eq!(
            verify_hex_token(b"another secret of enough length!!", &token, "t", 50),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_hex_token(SECRET, "garbage", "t", 50),
            Err(TokenError::Malformed)
        );
        let (encoded, _) = token.split_once('.').expect("dot");
        assert_eq!(
            verify_hex_token(SECRET, encoded, "t", 50),
            Err(TokenError::Malformed)
        );
        // a MAC over the JSON instead of the hex is refused
        let json = php_json_claims(7, "t", 100);
        let mut mac = HmacSha256::new_from_slice(SECRET).expect("key");
        mac.update(json.as_bytes());
        let wrong = format!("{encoded}.{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            verify_hex_token(SECRET, &wrong, "t", 50),
            Err(TokenError::BadSignature)
        );
        // tampered claims keep the old signature
        let other = sign_hex_token(SECRET, 8, "t", 100);
        let tampered = format!(
            "{}.{}",
            other.split_once('.').expect("dot").0,
            token.split_once('.').expect("dot").1
        );
        assert_eq!(
            verify_hex_token(SECRET, &tampered, "t", 50),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn string_user_ids_are_accepted() {
        let encoded = hex::encode(r#"{"user_id":"12","topic":"t","expires":100}"#);
        let mut mac = HmacSha256::new_from_slice(SECRET).expect("key");
        mac.update(encoded.as_bytes());
        let token = format!("{encoded}.{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(verify_hex_token(SECRET, &token, "t", 50), Ok(12));
    }
}
