//! The WebSocket decoder fed arbitrary bytes, whole and in arbitrary chunks:
//! it never panics, a message never exceeds the cap, a text message is always
//! UTF-8, what it holds between reads stays bounded, and how the bytes are
//! split never changes what comes out.
//!
//! Input: one byte choosing the cap (even: the production 4 KiB, odd: a small
//! cap, to reach the size checks cheaply), one byte seeding the chunk sizes,
//! then the bytes a client would send after the upgrade.
#![no_main]
use libfuzzer_sys::fuzz_target;
use skywave::ws::{DecodeError, Decoder, Inbound, MAX_INBOUND_MESSAGE};

/// The most a decoder may hold between reads beyond the message in
/// progress: an incomplete header (14 bytes) and control payload (125).
const PARTIAL_FRAME: usize = 14 + 125;

fuzz_target!(|data: &[u8]| {
    let [cap_choice, chunk_seed, stream @ ..] = data else {
        return;
    };
    let cap = if cap_choice & 1 == 0 {
        MAX_INBOUND_MESSAGE
    } else {
        usize::from(cap_choice >> 1)
    };
    let whole = decode(cap, stream, &mut std::iter::empty());
    let mut state = u32::from(*chunk_seed) | 0x100;
    let mut sizes = std::iter::from_fn(move || {
        // xorshift32: chunks of 1 to 64 bytes
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some(1 + (state % 64) as usize)
    });
    let chunked = decode(cap, stream, &mut sizes);
    assert_eq!(whole, chunked, "splitting the bytes changed the result");
});

/// Feeds `stream` in chunks of `sizes` (what is left at once when they run out).
fn decode(
    cap: usize,
    stream: &[u8],
    sizes: &mut dyn Iterator<Item = usize>,
) -> (Vec<Inbound>, Option<DecodeError>) {
    let mut decoder = Decoder::new(cap);
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        for item in decoder.feed(chunk) {
            match item {
                Ok(inbound) => {
                    check(&inbound, cap);
                    out.push(inbound);
                }
                Err(error) => return (out, Some(error)),
            }
        }
        let held = decoder.buffered();
        assert!(
            held <= cap + PARTIAL_FRAME,
            "{held} bytes held between reads (cap {cap})"
        );
    }
    (out, None)
}

fn check(inbound: &Inbound, cap: usize) {
    match inbound {
        Inbound::Text(text) => {
            assert!(
                text.len() <= cap,
                "text of {} bytes over the cap {cap}",
                text.len()
            );
            assert!(
                std::str::from_utf8(text).is_ok(),
                "a text message that is not UTF-8"
            );
        }
        Inbound::Binary(binary) => {
            assert!(
                binary.len() <= cap,
                "binary of {} bytes over the cap {cap}",
                binary.len()
            );
        }
        Inbound::Ping(payload) => assert!(payload.len() <= 125, "ping of {} bytes", payload.len()),
        Inbound::Pong | Inbound::Close(_) => {}
    }
}
