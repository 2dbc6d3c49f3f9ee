//! The socket side of a server WebSocket connection, written for many idle
//! sockets and fast fan-out; the protocol itself is `codec/`. In production
//! the stream is hyper's upgraded connection ([`Upgrade`]), whose type is
//! known at compile time; tests may use any `AsyncRead + AsyncWrite`.
//!
//! - an idle socket holds no buffer at all: a read goes into a chunk on the
//!   stack for the length of one poll and straight into the decoder, which
//!   keeps only what it still needs;
//! - an outgoing frame is written as a small header plus the shared payload
//!   (one vectored write), never copied per socket.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::codec::{self, DecodeError, Decoder, Inbound, Opcode};

/// Why reading stopped; each maps to one close code in the session.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection or it failed.
    Gone,
    /// The peer's bytes broke the protocol or a limit.
    Invalid(DecodeError),
}

/// The most read from the socket per read call.
const READ_CHUNK: usize = 1024;

/// What the public listener's upgrade hands over: the TCP stream hyper
/// served, replaying first the bytes it read past the upgrade request.
/// Vectored writes go through to the stream's `writev`.
pub type Upgrade = TokioIo<Upgraded>;

pub struct Connection<S = Upgrade> {
    stream: S,
    decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, max_message: usize) -> Self {
        Connection {
            stream,
            decoder: Decoder::new(max_message),
        }
    }

    /// The next message or control frame. Cancel-safe: bytes are read and
    /// handed to the decoder within one poll, so nothing is lost when
    /// another branch wins a select.
    pub async fn recv(&mut self) -> Result<Inbound, ReadError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Inbound, ReadError>> {
        if let Some(decoded) = self.decoder.feed(&[]).next() {
            return Poll::Ready(decoded.map_err(ReadError::Invalid));
        }
        // Lives for this poll only: the session future carries no buffer.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            let mut read = ReadBuf::uninit(&mut chunk);
            if ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read)).is_err()
                || read.filled().is_empty()
            {
                return Poll::Ready(Err(ReadError::Gone));
            }
            if let Some(decoded) = self.decoder.feed(read.filled()).next() {
                return Poll::Ready(decoded.map_err(ReadError::Invalid));
            }
        }
    }

    /// Sends a text frame; `payload` must be UTF-8 (frames are built so).
    pub async fn send_text(&mut self, payload: &Bytes) -> io::Result<()> {
        self.send_frame(Opcode::Text, payload).await
    }

    pub async fn send_ping(&mut self) -> io::Result<()> {
        self.send_frame(Opcode::Ping, &[]).await
    }

    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(Opcode::Pong, payload).await
    }

    /// Sends a close frame (the reason cut to fit, at a character boundary)
    /// and the TCP FIN, then waits (bounded by the caller) for the peer to
    /// finish, so the close frame is not lost to a reset.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let payload = codec::close_payload(code, reason);
        if self.send_frame(Opcode::Close, &payload).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        // Drain until the peer closes too.
        let mut sink = [0u8; 64];
        while let Ok(1..) = self.stream.read(&mut sink).await {}
    }

    async fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let mut header = [0u8; codec::MAX_HEADER];
        let header_len = codec::encode_header(&mut header, opcode, payload.len());
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

#[cfg(test)]
mod tests;
