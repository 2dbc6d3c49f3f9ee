//! Test helpers: client frames built by hand, and a decoder run to the end.

use super::{DecodeError, Decoder, Inbound};

pub const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A client frame with the given mask; the shortest length encoding.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A client frame masked with [`MASK`].
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, MASK)
}

/// Everything `bytes` decode to, fed `chunk` bytes at a time, and the error
/// that stopped decoding, if any.
pub fn decode_chunked(
    max_message: usize,
    bytes: &[u8],
    chunk: usize,
) -> (Vec<Inbound>, Option<DecodeError>) {
    let mut decoder = Decoder::new(max_message);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        for item in decoder.feed(piece) {
            match item {
                Ok(inbound) => out.push(inbound),
                Err(error) => return (out, Some(error)),
            }
        }
    }
    (out, None)
}

/// [`decode_chunked`] with one feed of everything.
pub fn decode(max_message: usize, bytes: &[u8]) -> (Vec<Inbound>, Option<DecodeError>) {
    decode_chunked(max_message, bytes, bytes.len())
}
