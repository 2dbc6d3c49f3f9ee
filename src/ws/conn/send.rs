//! Frames on their way out: each a small header plus its payload (shared
//! with every other socket, never copied), up to [`BATCH`] of them in one
//! vectored write, and what the socket does not take kept in order, the
//! first possibly cut, to be finished before anything else.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::super::codec::{self, Opcode};

/// The most frames one write carries (two slices each, well under
/// `IOV_MAX`). A socket with a backlog (a burst, the flush at shutdown)
/// takes it in a few writes instead of one per frame.
pub const BATCH: usize = 32;

/// One frame ready to go.
pub struct OutFrame {
    header: [u8; codec::MAX_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl OutFrame {
    pub fn new(opcode: Opcode, payload: &Bytes) -> Self {
        let mut header = [0u8; codec::MAX_HEADER];
        let header_len = codec::encode_header(&mut header, opcode, payload.len());
        OutFrame {
            header,
            // At most MAX_HEADER (10).
            header_len: header_len as u8,
            payload: payload.clone(),
        }
    }

    /// Bytes that already are (part of) a frame: no header of their own.
    pub fn raw(bytes: &Bytes) -> Self {
        OutFrame {
            header: [0u8; codec::MAX_HEADER],
            header_len: 0,
            payload: bytes.clone(),
        }
    }

    fn head(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    fn len(&self) -> usize {
        self.head().len() + self.payload.len()
    }
}

/// Frames the socket has not taken yet; `sent` bytes of the first are out.
pub struct Unsent {
    frames: VecDeque<OutFrame>,
    sent: usize,
}

impl Unsent {
    /// What is left of `frames` once `done` of them and `sent` bytes of
    /// the next went out.
    pub fn rest(mut frames: Vec<OutFrame>, done: usize, sent: usize) -> Box<Unsent> {
        frames.drain(..done);
        Box::new(Unsent {
            frames: VecDeque::from(frames),
            sent,
        })
    }

    /// Writes until nothing is left or the socket is full.
    pub fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        taken: &mut u64,
    ) -> Poll<io::Result<()>> {
        loop {
            let frames = self.frames.make_contiguous();
            let mut done = 0;
            let result = poll_write(stream, cx, frames, &mut done, &mut self.sent, taken);
            self.frames.drain(..done);
            ready!(result)?;
            if self.frames.is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Writes `frames[*done..]` (of which `*sent` bytes of the first are out)
/// as far as the socket takes them, up to [`BATCH`] frames per write,
/// moving `done` and `sent` along; ready once every frame is out.
pub fn poll_write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    frames: &[OutFrame],
    done: &mut usize,
    sent: &mut usize,
    taken: &mut u64,
) -> Poll<io::Result<()>> {
    while *done < frames.len() {
        let mut slices = [IoSlice::new(&[]); 2 * BATCH];
        let mut count = 0;
        let mut skip = *sent;
        for frame in frames[*done..].iter().take(BATCH) {
            let (head, body) = (frame.head(), &frame.payload[..]);
            let from_head = skip.min(head.len());
            let (head, body) = (&head[from_head..], &body[skip - from_head..]);
            skip = 0;
            for part in [head, body] {
                if !part.is_empty() {
                    slices[count] = IoSlice::new(part);
                    count += 1;
                }
            }
        }
        let written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *taken += written as u64;
        let mut left = written;
        while left > 0 {
            let rest_of_frame = frames[*done].len() - *sent;
            if left < rest_of_frame {
                *sent += left;
                break;
            }
            left -= rest_of_frame;
            *done += 1;
            *sent = 0;
        }
    }
    Poll::Ready(Ok(()))
}
