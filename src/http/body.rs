//! Reading and validating internal API bodies: a JSON object of at most
//! 1 MiB, read incrementally so an oversized body is refused, never buffered
//! whole (a declared length over the cap is refused before reading), within
//! a deadline (a body that trickles in gets 408). The payload is kept as raw
//! JSON text and forwarded unchanged. Duplicate keys are refused: which of
//! two `topic`s a publisher meant is not ours to guess.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use axum::body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::ApiError;
use crate::registry::TopicMeta;

pub const MAX_BODY: usize = 1 << 20;

pub struct ApiRequest {
    fields: HashMap<String, Box<RawValue>>,
}

/// Reads the API request body within `deadline`.
pub async fn read(body: Body, deadline: Duration) -> Result<ApiRequest, ApiError> {
    parse(&collect(body, MAX_BODY, deadline).await?)
}

/// A whole body of at most `cap` bytes (413 past it), within `deadline`
/// (408 past it), read in pieces, never buffered beyond the cap.
pub async fn collect(body: Body, cap: usize, deadline: Duration) -> Result<bytes::Bytes, ApiError> {
    let collected = tokio::time::timeout(deadline, Limited::new(body, cap).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout)?
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("bad request: body could not be read")
            }
        })?;
    Ok(collected.to_bytes())
}

/// A map, not a struct: serde would accept a JSON array for a struct.
pub fn parse(bytes: &[u8]) -> Result<ApiRequest, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest("bad request: body is not UTF-8"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let fields = deserializer
        .deserialize_map(UniqueKeys)
        .and_then(|fields| deserializer.end().map(|()| fields))
        .map_err(|error| match error.to_string() {
            text if text.starts_with(DUPLICATE) => {
                ApiError::BadRequest("bad request: duplicate key in the JSON object")
            }
            _ => ApiError::BadRequest("bad request: body must be a JSON object"),
        })?;
    Ok(ApiRequest { fields })
}

const DUPLICATE: &str = "duplicate key";

/// A JSON object's fields, refusing a key given twice.
struct UniqueKeys;

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = HashMap<String, Box<RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = HashMap::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            if fields.insert(key, value).is_some() {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
        }
        Ok(fields)
    }
}

impl ApiRequest {
    pub fn topic(&self, max_len: usize) -> Result<String, ApiError> {
        let raw = self
            .fields
            .get("topic")
            .ok_or(ApiError::BadRequest("bad request: missing topic"))?;
        let topic: String = serde_json::from_str(raw.get())
            .map_err(|_| ApiError::BadRequest("bad request: topic must be a string"))?;
        if topic.is_empty() {
            return Err(ApiError::BadRequest("bad request: empty topic"));
        }
        if topic.len() > max_len {
            return Err(ApiError::BadRequest("bad request: topic too long"));
        }
        Ok(topic)
    }

    /// `meta.require_token`; an absent or null meta (or flag) means false.
    pub fn meta(&self) -> Result<TopicMeta, ApiError> {
        let Some(raw) = self.fields.get("meta") else {
            return Ok(TopicMeta::default());
        };
        let meta: Option<HashMap<String, serde_json::Value>> = serde_json::from_str(raw.get())
            .map_err(|_| ApiError::BadRequest("bad request: meta must be an object"))?;
        let require_token = match meta.as_ref().and_then(|m| m.get("require_token")) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(flag)) => *flag,
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "bad request: meta.require_token must be a boolean",
                ))
            }
        };
        Ok(TopicMeta { require_token })
    }

    pub fn take_payload(&mut self) -> Result<Box<RawValue>, ApiError> {
        self.fields
            .remove("payload")
            .ok_or(ApiError::BadRequest("bad request: missing payload"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(bytes: &[u8]) -> bool {
        match parse(bytes) {
            Err(ApiError::BadRequest(_)) => true,
            Ok(request) => matches!(request.topic(1024), Err(ApiError::BadRequest(_))),
            Err(_) => false,
        }
    }

    #[test]
    fn refuses_what_the_go_worker_refuses() {
        for body in [
            &b""[..],
            b"{not json",
            b"[1,2]",
            b"\"topic\"",
            b"null",
            b"{\"topic\":123}",
            b"{}",
            b"{\"topic\":\"\"}",
        ] {
            assert!(bad(body), "{}", String::from_utf8_lossy(body));
        }
        let mut no_payload = parse(b"{\"topic\":\"t\"}").expect("object");
        assert!(matches!(
            no_payload.take_payload(),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn duplicate_keys_and_invalid_utf8_are_named() {
        let message = |body: &[u8]| match parse(body) {
            Err(ApiError::BadRequest(why)) => why,
            _ => "accepted",
        };
        assert_eq!(
            message(br#"{"topic":"a","topic":"b"}"#),
            "bad request: duplicate key in the JSON object"
        );
        assert_eq!(
            message(b"{\"topic\":\"\xff\"}"),
            "bad request: body is not UTF-8"
        );
        assert_eq!(
            message(br#"{"topic":"a"} trailing"#),
            "bad request: body must be a JSON object"
        );
        // Nested duplicates are the payload's business, forwarded as they are.
        assert!(parse(br#"{"topic":"a","payload":{"x":1,"x":2}}"#).is_ok());
    }

    #[test]
    fn payload_stays_raw_and_null_is_a_payload() {
        let mut request = parse(br#"{"topic":"t","payload":null}"#).expect("object");
        assert_eq!(request.take_payload().expect("present").get(), "null");
        let mut request =
            parse(br#"{"topic":"t","payload":{"n": 9007199254740993}}"#).expect("object");
        assert_eq!(
            request.take_payload().expect("present").get(),
            r#"{"n": 9007199254740993}"#
        );
    }

    #[test]
    fn meta_forms() {
        let meta = |body: &[u8]| parse(body).expect("object").meta();
        assert_eq!(
            meta(br#"{"topic":"t"}"#).ok(),
            Some(TopicMeta {
                require_token: false
            })
        );
        assert_eq!(
            meta(br#"{"topic":"t","meta":null}"#).ok(),
            Some(TopicMeta {
                require_token: false
            })
        );
        assert_eq!(
            meta(br#"{"topic":"t","meta":{}}"#).ok(),
            Some(TopicMeta {
                require_token: false
            })
        );
        assert_eq!(
            meta(br#"{"topic":"t","meta":{"require_token":true}}"#).ok(),
            Some(TopicMeta {
                require_token: true
            })
        );
        assert!(meta(br#"{"topic":"t","meta":"x"}"#).is_err());
    }
}
