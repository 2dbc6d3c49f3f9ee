//! Close frame payloads (RFC 6455 section 5.5.1): a peer's, checked as far as
//! the frame itself goes (length, UTF-8 reason), and the server's, whose
//! reason is cut to fit a control frame at a character boundary. Whether a
//! peer's code is one it may send is judged in `session/close.rs`.

use super::header::MAX_CONTROL_PAYLOAD;
use super::DecodeError;

/// Room for a close reason: a control frame's payload less the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD as usize - 2;

/// The code of a peer's close frame, if it has one.
///
/// A reason that is not UTF-8 gets 1007, as a text message would: section
/// 7.4.1 defines 1007 for "non-UTF-8 data within a message", section 8.1
/// says to fail the connection on any invalid UTF-8 the endpoint must read
/// as text, and it keeps the answer the server has always given.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(DecodeError::Protocol("close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(DecodeError::InvalidUtf8);
            }
            Ok(Some(u16::from_be_bytes([*high, *low])))
        }
    }
}

/// The payload of a server close frame: `code`, then as much of `reason`
/// as fits in [`MAX_CLOSE_REASON`] bytes, never cutting a character.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let reason = cut_at_char_boundary(reason, MAX_CLOSE_REASON);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_byte_close_payload_fails() {
        assert!(matches!(parse_close(&[3]), Err(DecodeError::Protocol(_))));
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[0x03, 0xE8]), Ok(Some(1000)));
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_fails_with_invalid_data() {
        assert_eq!(
            parse_close(&[0x03, 0xE8, b'o', 0xFF]),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            parse_close(&[0x03, 0xE8, 0xCE, 0xBA]),
            Ok(Some(1000)),
            "a UTF-8 reason"
        );
    }

    #[test]
    fn codes_are_reported_unjudged() {
        // session/close.rs decides what 0, 1005 or 2999 earn; the codec only reads them.
        for code in [0u16, 999, 1005, 2999, 5000, u16::MAX] {
            assert_eq!(parse_close(&code.to_be_bytes()), Ok(Some(code)));
        }
    }

    #[test]
    fn server_reasons_are_cut_at_a_char_boundary() {
        assert_eq!(close_payload(1001, "bye"), b"\x03\xE9bye");
        // 122 ASCII bytes then "é" (2 bytes): 124 > 123, so "é" goes whole.
        let reason = format!("{}é", "a".repeat(122));
        let payload = close_payload(1000, &reason);
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        // 4-byte characters: 30 fit (120 bytes), the 31st would straddle 123.
        let reason = "𝄞".repeat(40);
        let payload = close_payload(1000, &reason);
        assert_eq!(payload.len(), 2 + 120);
        assert_eq!(std::str::from_utf8(&payload[2..]), Ok(&reason[..120]));
        // exactly 123 bytes stay whole; the frame is at most 125 bytes.
        let reason = "b".repeat(123);
        assert_eq!(close_payload(1000, &reason).len(), 125);
        assert_eq!(close_payload(1000, &"c".repeat(500)).len(), 125);
        for len in 0..200 {
            let reason: String = "aé€𝄞".chars().cycle().take(len).collect();
            let payload = close_payload(1000, &reason);
            assert!(payload.len() <= 125);
            let kept = std::str::from_utf8(&payload[2..]).expect("whole characters");
            assert!(reason.starts_with(kept));
        }
    }
}
