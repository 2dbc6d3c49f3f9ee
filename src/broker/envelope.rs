//! The message on `<prefix>events`, in the Go worker's format:
//! `{"origin_id":"<16 hex>","topic":"T","payload":<any JSON value>}`.
//! The payload is carried as raw JSON text, never re-encoded.

use serde_json::value::RawValue;

#[derive(Debug)]
pub struct Envelope {
    pub origin_id: Option<String>,
    pub topic: String,
    pub payload: Box<RawValue>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no string \"topic\"")]
    NoTopic,
    #[error("no \"payload\"")]
    NoPayload,
}

pub fn encode(origin_id: &str, topic: &str, payload: &RawValue) -> String {
    let topic = serde_json::Value::String(topic.to_string()).to_string();
    let payload = payload.get();
    let mut out = String::with_capacity(40 + topic.len() + payload.len());
    out.push_str("{\"origin_id\":\"");
    out.push_str(origin_id);
    out.push_str("\",\"topic\":");
    out.push_str(&topic);
    out.push_str(",\"payload\":");
    out.push_str(payload);
    out.push('}');
    out
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let mut fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_slice(bytes).map_err(|_| EnvelopeError::NotAnObject)?;
    let topic = fields
        .get("topic")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|topic| !topic.is_empty())
        .ok_or(EnvelopeError::NoTopic)?;
    let payload = fields.remove("payload").ok_or(EnvelopeError::NoPayload)?;
    let origin_id = fields
        .get("origin_id")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    Ok(Envelope {
        origin_id,
        topic,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_payload_text() {
        let payload =
            RawValue::from_string(r#"{"a": [1, 2.50, "é\u00e9"]}"#.to_string()).expect("raw");
        let text = encode("0123456789abcdef", "qso/live", &payload);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["origin_id"], "0123456789abcdef");
        assert_eq!(value["topic"], "qso/live");
        let back = decode(text.as_bytes()).expect("decodes");
        assert_eq!(back.topic, "qso/live");
        assert_eq!(back.origin_id.as_deref(), Some("0123456789abcdef"));
        assert_eq!(back.payload.get(), payload.get());
    }

    #[test]
    fn malformed_envelopes() {
        assert_eq!(
            decode(b"this is not json").err(),
            Some(EnvelopeError::NotAnObject)
        );
        assert_eq!(decode(b"[]").err(), Some(EnvelopeError::NotAnObject));
        assert_eq!(
            decode(br#"{"origin_id":1}"#).err(),
            Some(EnvelopeError::NoTopic)
        );
        assert_eq!(decode(b"{}").err(), Some(EnvelopeError::NoTopic));
        assert_eq!(
            decode(br#"{"topic":"t"}"#).err(),
            Some(EnvelopeError::NoPayload)
        );
        assert_eq!(
            decode(br#"{"topic":5,"payload":1}"#).err(),
            Some(EnvelopeError::NoTopic)
        );
        let no_origin =
            decode(br#"{"topic":"t","payload":null}"#).expect("a foreign envelope without origin");
        assert_eq!(no_origin.origin_id, None);
        assert_eq!(no_origin.payload.get(), "null");
    }
}
