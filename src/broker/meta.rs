//! A topic's meta as the registry stores it, in the Go worker's format
//! `{"require_token":bool}` (Redis values and NATS key-value entries alike).

use crate::topic::TopicMeta;

#[derive(serde::Deserialize)]
struct StoredMeta {
    #[serde(default)]
    require_token: bool,
}

pub fn encode_meta(meta: TopicMeta) -> String {
    format!("{{\"require_token\":{}}}", meta.require_token)
}

/// A value another node wrote. Unreadable values count as private topics:
/// refusing a token-less socket is the safe side.
pub fn decode_meta(raw: &[u8]) -> TopicMeta {
    match serde_json::from_slice::<StoredMeta>(raw) {
        Ok(stored) => TopicMeta {
            require_token: stored.require_token,
        },
        Err(_) => TopicMeta {
            require_token: true,
        },
    }
}
