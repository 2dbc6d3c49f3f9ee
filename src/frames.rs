//! The JSON messages the server sends to browsers, each encoded once. A push
//! frame is built around the payload's raw JSON text, so the payload is never
//! re-encoded and the same buffer goes to every recipient (the hub, the
//! cluster's subscriber and the WebSocket sessions all use these).

use serde::Serialize;
use serde_json::value::RawValue;

/// One encoded WebSocket text message (UTF-8 JSON), shared by every recipient.
pub type Frame = bytes::Bytes;

/// Writes the header of a server frame (unmasked; `first` is FIN and the
/// opcode) for a payload of `len` bytes, with the shortest length encoding;
/// returns how many of the 10 bytes it used. The one header encoder: the
/// codec's `ws::codec::encode_header` is this for its opcodes.
pub fn encode_header(out: &mut [u8; 10], first: u8, len: usize) -> usize {
    out[0] = first;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The header of a final text frame whose payload is `len` bytes, and how
/// many of the 10 bytes it uses (see [`wire`]).
pub fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    let used = encode_header(&mut head, 0x81, len);
    (head, used)
}

/// The whole WebSocket text frame for `payload`, header included, in one
/// buffer: what the hub writes into idle sockets (one `write` each), built
/// once per publish.
pub fn wire(payload: &Frame) -> bytes::Bytes {
    let (head, used) = text_header(payload.len());
    let mut wire = Vec::with_capacity(used + payload.len());
    wire.extend_from_slice(&head[..used]);
    wire.extend_from_slice(payload);
    bytes::Bytes::from(wire)
}

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

/// After this node lost its cluster subscription for a while: events
/// published on other nodes meanwhile did not reach this node's sockets, and
/// a client should refetch what it shows. Clients that do not know the type
/// ignore it.
pub fn resync() -> Frame {
    Frame::from_static(b"{\"type\":\"resync\",\"reason\":\"cluster_rejoin\"}")
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
