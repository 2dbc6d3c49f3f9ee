//! The RFC 6455 frame codec, pure: bytes in, messages or the error that ends
//! the connection out (`Decoder`), and the frames the server sends
//! (`encode_header`, `close_payload`). No I/O and no async: `conn.rs` drives
//! it from the socket, the `ws_decoder` fuzz target from arbitrary bytes.
//!
//! Every server-side rule of the RFC is enforced here, beside its unit test,
//! except the validity of a peer's close code: the decoder reports the code
//! and `session/close.rs`, the one place that picks close codes, judges it.

mod close;
mod decoder;
mod header;
mod utf8;

#[cfg(test)]
pub(crate) mod testing;

pub use self::close::close_payload;
pub use self::decoder::{Decoded, Decoder};
pub use self::header::{encode_header, MAX_HEADER};

/// One inbound message (fragments joined) or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A text message; always valid UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// A close frame and its code, if it carried one (not yet judged).
    Close(Option<u16>),
}

/// Why decoding stopped; `session/close.rs` maps each to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The peer broke the protocol (1002).
    Protocol(&'static str),
    /// A message over the inbound limit, fragments summed (1009).
    TooBig,
    /// A text message or close reason that is not UTF-8 (1007).
    InvalidUtf8,
}

/// The opcodes RFC 6455 defines; the others (3-7, 0xB-0xF) are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}
