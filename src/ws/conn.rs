//! The socket side of a server WebSocket connection, written for many idle
//! sockets and fast fan-out; the protocol itself is `codec/`. In production
//! the stream is hyper's upgraded connection ([`Upgrade`]), whose type is
//! known at compile time; tests may use any `AsyncRead + AsyncWrite`.
//!
//! - an idle socket holds no buffer at all: a read goes into a chunk on the
//!   stack for the length of one poll and straight into the decoder, which
//!   keeps only what it still needs;
//! - an outgoing frame is written as a small header plus the shared payload
//!   (one vectored write, up to 32 frames in one), never copied per socket
//!   (`send.rs`);
//! - writes are cancel-safe: what the socket does not take at once is kept
//!   (boxed, so only a connection in that state pays for it) and goes out
//!   before anything else, so a frame is never cut by a cancelled write and
//!   the session may wait for it with timers of its own.

mod send;
mod stream;

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use self::send::{OutFrame, Unsent};
use super::codec::{self, DecodeError, Decoder, Inbound, Opcode};

pub use self::send::BATCH;
pub use self::stream::Upgrade;

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

pub struct Connection<S = Upgrade> {
    stream: S,
    decoder: Decoder,
    /// What the socket did not take at once.
    unsent: Option<Box<Unsent>>,
    /// Bytes the socket has taken so far: the session tells a slow socket
    /// (this grows) from a stuck one (it does not).
    taken: u64,
}

impl Connection<Upgrade> {
    /// The TCP socket itself, shared, for the hub's write-through (none if
    /// the upgrade did not hand over a plain TCP stream).
    pub fn socket(&self) -> Option<Arc<TcpStream>> {
        self.stream.socket()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, max_message: usize) -> Self {
        Connection {
            stream,
            decoder: Decoder::new(max_message),
            unsent: None,
            taken: 0,
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

    /// Sends a text frame whole, in one call (the session uses
    /// `start_texts` and `flush`, to watch a slow write). Cancel-safe once
    /// polled: the frame is then written whole, by this call or the next
    /// write (or [`flush`](Self::flush)).
    #[cfg(test)]
    pub async fn send_text(&mut self, payload: &Bytes) -> io::Result<()> {
        self.send_frame(Opcode::Text, payload).await
    }

    pub async fn send_ping(&mut self) -> io::Result<()> {
        self.send_frame(Opcode::Ping, &Bytes::new()).await
    }

    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(Opcode::Pong, &Bytes::copy_from_slice(payload))
            .await
    }

    /// Writes what the socket takes now of text frames for `payloads` (in
    /// order; UTF-8, as frames are built), without waiting, and keeps the
    /// rest for [`flush`](Self::flush): true if all of it went out. Only
    /// once nothing is left unsent (an error otherwise).
    pub fn start_texts(&mut self, payloads: &[Bytes]) -> io::Result<bool> {
        if self.unsent.is_some() {
            return Err(io::Error::other("a frame is still being written"));
        }
        // A waker that does nothing: when the socket is full, the caller's
        // `flush` polls again with its own, and is woken then.
        let mut cx = Context::from_waker(Waker::noop());
        match self.start_frames(Opcode::Text, payloads, &mut cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    /// [`start_texts`](Self::start_texts) for raw bytes (the tail of a frame
    /// the hub began writing): what the socket takes now, the rest kept.
    pub fn start_raw(&mut self, bytes: &Bytes) -> io::Result<bool> {
        if self.unsent.is_some() {
            return Err(io::Error::other("a frame is still being written"));
        }
        let mut cx = Context::from_waker(Waker::noop());
        let frame = OutFrame::raw(bytes);
        let (mut done, mut sent) = (0, 0);
        let result = send::poll_write(
            &mut self.stream,
            &mut cx,
            std::slice::from_ref(&frame),
            &mut done,
            &mut sent,
            &mut self.taken,
        );
        match result {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => {
                self.unsent = Some(Unsent::rest(vec![frame], done, sent));
                Ok(false)
            }
        }
    }

    /// Finishes what an earlier write left unsent, if anything. Cancel-safe.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Connection {
            stream,
            unsent,
            taken,
            ..
        } = self;
        let Some(rest) = unsent.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(rest.poll_write(stream, cx, taken));
        *unsent = None;
        Poll::Ready(result)
    }

    /// Writes frames as far as the socket takes them; what it does not is
    /// kept in `unsent` (only then boxed: one frame costs no allocation).
    fn start_frames(
        &mut self,
        opcode: Opcode,
        payloads: &[Bytes],
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let (mut done, mut sent) = (0, 0);
        if let [payload] = payloads {
            let frame = OutFrame::new(opcode, payload);
            let frames = std::slice::from_ref(&frame);
            let result = send::poll_write(
                &mut self.stream,
                cx,
                frames,
                &mut done,
                &mut sent,
                &mut self.taken,
            );
            if result.is_pending() {
                self.unsent = Some(Unsent::rest(vec![frame], done, sent));
            }
            return result;
        }
        let frames: Vec<OutFrame> = payloads
            .iter()
            .map(|payload| OutFrame::new(opcode, payload))
            .collect();
        let result = send::poll_write(
            &mut self.stream,
            cx,
            &frames,
            &mut done,
            &mut sent,
            &mut self.taken,
        );
        if result.is_pending() {
            self.unsent = Some(Unsent::rest(frames, done, sent));
        }
        result
    }

    /// Bytes the socket has taken since the connection was made.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Sends a close frame (the reason cut to fit, at a character boundary)
    /// and the TCP FIN, then waits (bounded by the caller) for the peer to
    /// finish, so the close frame is not lost to a reset. A frame left
    /// unsent goes out first.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let payload = Bytes::from(codec::close_payload(code, reason));
        if self.send_frame(Opcode::Close, &payload).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        // Drain until the peer closes too.
        let mut sink = [0u8; 64];
        while let Ok(1..) = self.stream.read(&mut sink).await {}
    }

    async fn send_frame(&mut self, opcode: Opcode, payload: &Bytes) -> io::Result<()> {
        self.flush().await?;
        // The first poll hands the frame over; a cancelled call after it
        // leaves the rest in `unsent`, never a cut frame.
        let mut handed = false;
        poll_fn(|cx| {
            if std::mem::replace(&mut handed, true) {
                self.poll_flush(cx)
            } else {
                self.start_frames(opcode, std::slice::from_ref(payload), cx)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests;
