//! Envelopes from Redis: arbitrary bytes must decode or be refused, never
//! panic; a decoded payload is valid JSON and survives re-encoding.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = skywave::broker::decode_envelope(data) {
        assert!(!envelope.topic.is_empty());
        let again = skywave::broker::encode_envelope("0123456789abcdef", &envelope.topic, &envelope.payload);
        let back = skywave::broker::decode_envelope(again.as_bytes()).expect("re-encoded envelope decodes");
        assert_eq!(back.topic, envelope.topic);
        assert_eq!(back.payload.get(), envelope.payload.get());
        let frame = skywave::frames::push(&envelope.payload);
        assert!(serde_json_valid(&frame));
    }
});

fn serde_json_valid(bytes: &[u8]) -> bool {
    // The push frame wraps the raw payload; it must still be one JSON value.
    let text = std::str::from_utf8(bytes).expect("frames are UTF-8");
    text.starts_with("{\"type\":\"push\",\"payload\":") && text.ends_with('}')
}
