//! The JSON messages the server sends to browsers, each encoded once. A push
//! frame is built around the payload's raw JSON text, so the payload is never
//! re-encoded and the same buffer goes to every recipient (the hub, the
//! cluster's subscriber and the WebSocket sessions all use these).

use serde::Serialize;
use serde_json::value::RawValue;

/// One encoded WebSocket text message (UTF-8 JSON), shared by every recipient.
pub type Frame = bytes::Bytes;

pub fn push(payload: &RawValue) -> Frame {
    let payload = payload.get();
    let mut text = String::with_capacity(payload.len() + 28);
    text.push_str("{\"type\":\"push\",\"payload\":");
    text.push_str(payload);
    text.push('}');
    Frame::from(text)
}

pub fn auth_ok() -> Frame {
    Frame::from_static(b"{\"type\":\"auth_ok\"}")
}

pub fn error(code: &str, message: &str) -> Frame {
    let value = serde_json::json!({ "type": "error", "code": code, "message": message });
    Frame::from(value.to_string())
}

pub fn lagged(missed: u64) -> Frame {
    Frame::from(format!("{{\"type\":\"lagged\",\"missed\":{missed}}}"))
}

pub fn status<T: Serialize>(report: &T) -> Frame {
    #[derive(Serialize)]
    struct StatusFrame<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: &'a T,
    }
    let text = serde_json::to_string(&StatusFrame {
        kind: "status",
        payload: report,
    })
    .unwrap_or_else(|_| "{\"type\":\"status\",\"payload\":{}}".to_string());
    Frame::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_wraps_the_raw_payload() {
        let raw = RawValue::from_string("[1, {\"a\":\"\\u00e9\"}]".to_string()).expect("raw");
        let frame = push(&raw);
        assert_eq!(
            &frame[..],
            &b"{\"type\":\"push\",\"payload\":[1, {\"a\":\"\\u00e9\"}]}"[..]
        );
        let parsed: serde_json::Value = serde_json::from_slice(&frame).expect("json");
        assert_eq!(parsed["payload"][1]["a"], "é");
    }

    #[test]
    fn small_frames() {
        assert_eq!(&lagged(3)[..], b"{\"type\":\"lagged\",\"missed\":3}");
        let e: serde_json::Value =
            serde_json::from_slice(&error("unauthorized", "invalid or expired token"))
                .expect("json");
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "unauthorized");
    }
}
