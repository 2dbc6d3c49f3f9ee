//! A server-side WebSocket connection (RFC 6455) over a `TcpStream`, written
//! for many idle sockets and fast fan-out:
//!
//! - an idle socket holds no buffer at all: reads wait for readiness, then
//!   read into a buffer that is freed once its frames are consumed;
//! - an outgoing frame is written as a small header plus the shared payload
//!   (one vectored write), never copied per socket;
//! - inbound messages are capped (fragments summed) and checked as the RFC
//!   requires: masking, reserved bits and opcodes, control-frame rules,
//!   continuation order, UTF-8 of text messages.

use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Why reading stopped; each maps to one close code in the session.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection or it failed.
    Gone,
    /// The peer broke the protocol (1002).
    Protocol(&'static str),
    /// A message over the inbound limit (1009).
    TooBig,
    /// A text message that is not UTF-8 (1007).
    InvalidUtf8,
}

/// One inbound message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const READ_CHUNK: usize = 1024;

pub struct Connection {
    stream: TcpStream,
    max_message: usize,
    /// Received bytes not yet parsed; empty (unallocated) while idle.
    inbound: Vec<u8>,
    /// The fragments of a message in progress, and its opcode.
    fragments: Vec<u8>,
    fragmented: Option<u8>,
}

impl Connection {
    /// `leftover`: bytes the HTTP layer read past the upgrade request.
    pub fn new(stream: TcpStream, leftover: Bytes, max_message: usize) -> Self {
        Connection {
            stream,
            max_message,
            inbound: leftover.to_vec(),
            fragments: Vec::new(),
            fragmented: None,
        }
    }

    /// The next message or control frame. Cancel-safe: the only await is
    /// read readiness, so nothing is lost when another branch wins a select.
    pub async fn recv(&mut self) -> Result<Inbound, ReadError> {
        loop {
            if let Some(inbound) = self.parse_one()? {
                return Ok(inbound);
            }
            self.stream.readable().await.map_err(|_| ReadError::Gone)?;
            self.inbound.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.inbound) {
                Ok(0) => return Err(ReadError::Gone),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    /// Parses at most one frame from the buffer; `None` if more bytes are needed
    /// or the frame was a fragment of an unfinished message.
    fn parse_one(&mut self) -> Result<Option<Inbound>, ReadError> {
        loop {
            let Some(frame) = parse_frame(&self.inbound, self.max_message)? else {
                if self.inbound.is_empty() && self.inbound.capacity() > 0 {
                    self.inbound = Vec::new();
                }
                return Ok(None);
            };
            let mut payload =
                self.inbound[frame.header_len..frame.header_len + frame.payload_len].to_vec();
            apply_mask(&mut payload, frame.mask);
            self.inbound.drain(..frame.header_len + frame.payload_len);
            if self.inbound.is_empty() {
                self.inbound = Vec::new();
            }
            match frame.opcode {
                OP_PING => return Ok(Some(Inbound::Ping(payload))),
                OP_PONG => return Ok(Some(Inbound::Pong)),
                OP_CLOSE => return close_code(&payload).map(|code| Some(Inbound::Close(code))),
                OP_CONTINUATION => {
                    let Some(opcode) = self.fragmented else {
                        return Err(ReadError::Protocol("continuation frame without a message"));
                    };
                    if self.fragments.len() + payload.len() > self.max_message {
                        return Err(ReadError::TooBig);
                    }
                    self.fragments.extend_from_slice(&payload);
                    if frame.fin {
                        self.fragmented = None;
                        let message = std::mem::take(&mut self.fragments);
                        return finish(opcode, message).map(Some);
                    }
                }
                opcode => {
                    if self.fragmented.is_some() {
                        return Err(ReadError::Protocol("new message inside a fragmented one"));
                    }
                    if frame.fin {
                        return finish(opcode, payload).map(Some);
                    }
                    self.fragmented = Some(opcode);
                    self.fragments = payload;
                }
            }
        }
    }

    /// Sends a text frame; `payload` must be UTF-8 (frames are built so).
    pub async fn send_text(&mut self, payload: &Bytes) -> io::Result<()> {
        self.send_frame(OP_TEXT, payload).await
    }

    pub async fn send_ping(&mut self) -> io::Result<()> {
        self.send_frame(OP_PING, &[]).await
    }

    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(OP_PONG, payload).await
    }

    /// Sends a close frame and the TCP FIN, then waits (bounded by the
    /// caller) for the peer to finish, so the close frame is not lost to a reset.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        if self.send_frame(OP_CLOSE, &payload).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        // Drain until the peer closes too.
        let mut sink = [0u8; 64];
        loop {
            if self.stream.readable().await.is_err() {
                return;
            }
            match self.stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut header = [0u8; 10];
        let header_len = encode_header(&mut header, opcode, payload.len());
        let (mut head, mut body) = (&header[..header_len], payload);
        while !head.is_empty() || !body.is_empty() {
            let written = self
                .stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = written.min(head.len());
            head = &head[from_head..];
            body = &body[written - from_head..];
        }
        Ok(())
    }
}

struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Parses the frame at the start of `buf`; `None` until the whole frame is there.
fn parse_frame(buf: &[u8], max_message: usize) -> Result<Option<FrameHead>, ReadError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err(ReadError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let opcode = buf[0] & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(ReadError::Protocol("reserved opcode"));
    }
    if buf[1] & 0x80 == 0 {
        return Err(ReadError::Protocol("unmasked client frame"));
    }
    let (payload_len, mut header_len) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(ReadError::Protocol("payload length with the top bit set"));
            }
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        len => (usize::from(len), 2),
    };
    if opcode >= OP_CLOSE && (!fin || payload_len > 125) {
        return Err(ReadError::Protocol("invalid control frame"));
    }
    if payload_len > max_message {
        return Err(ReadError::TooBig);
    }
    if buf.len() < header_len + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[header_len..header_len + 4]);
    header_len += 4;
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn finish(opcode: u8, payload: Vec<u8>) -> Result<Inbound, ReadError> {
    if opcode == OP_TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(ReadError::InvalidUtf8);
        }
        Ok(Inbound::Text(payload))
    } else {
        Ok(Inbound::Binary(payload))
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ReadError::Protocol("close frame with a one-byte payload")),
        _ => {
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(ReadError::InvalidUtf8);
            }
            Ok(Some(u16::from_be_bytes([payload[0], payload[1]])))
        }
    }
}

/// Writes a server (unmasked) frame header; returns its length.
fn encode_header(out: &mut [u8; 10], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
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

#[cfg(test)]
mod tests;
