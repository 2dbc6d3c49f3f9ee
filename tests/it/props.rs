//! Property tests: token sign/verify round trips (hex and JWT) and Go
//! duration parsing/formatting, over generated inputs.

use std::time::Duration;

use proptest::prelude::*;
use skywave::auth::{php_json_claims, sign_hex_token, sign_jwt, verify, TokenError};
use skywave::config::{format_go_seconds, parse_go_duration};

const SECRET: &[u8] = b"prop-secret-0123456789abcdef0123456789abcdef";

fn topic() -> impl Strategy<Value = String> {
    // Any unicode, including '/', quotes, escapes and astral characters.
    prop::string::string_regex("[\\PC/\"\\\\:é📻\u{2028}]{1,40}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hex_tokens_round_trip(topic in topic(), user in any::<i64>(), expires in 1i64..4_000_000_000, other in topic()) {
        let token = sign_hex_token(SECRET, user, &topic, expires);
        prop_assert_eq!(verify(SECRET, &token, &topic, expires), Ok(user));
        prop_assert_eq!(verify(SECRET, &token, &topic, expires + 1), Err(TokenError::Expired));
        if other != topic {
            prop_assert_eq!(verify(SECRET, &token, &other, expires - 1), Err(TokenError::WrongTopic));
        }
        prop_assert!(verify(b"another-secret-0123456789abcdef0123456789", &token, &topic, 0).is_err());
    }

    #[test]
    fn any_flipped_character_is_refused(topic in topic(), user in 0i64..1_000_000, index in any::<prop::sample::Index>()) {
        let token = sign_hex_token(SECRET, user, &topic, 4_000_000_000);
        let mut bytes = token.clone().into_bytes();
        let i = index.index(bytes.len());
        bytes[i] = match bytes[i] { b'0' => b'1', b'.' => b'0', _ => b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assume!(tampered != token);
        prop_assert!(verify(SECRET, &tampered, &topic, 0).is_err());
    }

    #[test]
    fn jwts_round_trip(topic in topic(), user in 0i64..i64::MAX, exp in 1i64..4_000_000_000) {
        let token = sign_jwt(SECRET, user, &topic, exp).unwrap();
        prop_assert_eq!(verify(SECRET, &token, &topic, exp), Ok(user));
        prop_assert_eq!(verify(SECRET, &token, &topic, exp + 1), Err(TokenError::Expired));
        let other = format!("{}x", topic);
        prop_assert!(verify(SECRET, &token, &other, exp).is_err());
    }

    #[test]
    fn php_claims_are_json_with_the_same_topic(topic in topic(), user in any::<i64>(), expires in any::<i64>()) {
        let json = php_json_claims(user, &topic, expires);
        prop_assert!(json.is_ascii(), "json_encode escapes every non-ASCII character");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["topic"].as_str(), Some(topic.as_str()));
        prop_assert_eq!(value["user_id"].as_i64(), Some(user));
        prop_assert_eq!(value["expires"].as_i64(), Some(expires));
    }

    #[test]
    fn go_durations_parse_to_the_sum_of_their_parts(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000, frac in 0u64..10) {
        let text = format!("{h}h{m}m{s}.{frac}s{ms}ms");
        let want = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(frac * 100 + ms);
        prop_assert_eq!(parse_go_duration(&text), Ok(want));
    }

    #[test]
    // Go durations are int64 nanoseconds: at most 9,223,372,036 whole seconds.
    fn go_uptime_format_parses_back(seconds in 0u64..=9_223_372_036) {
        let text = format_go_seconds(seconds);
        prop_assert_eq!(parse_go_duration(&text), Ok(Duration::from_secs(seconds)));
        prop_assert!(text.ends_with('s'));
    }
}
