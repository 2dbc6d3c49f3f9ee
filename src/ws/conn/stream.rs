//! The stream under a [`Connection`](super::Connection): the TCP socket the
//! public listener accepted, taken back from hyper after the upgrade
//! (`Upgraded::downcast`) and shared (`Arc`), so the hub can write pushes
//! into it directly (`TcpStream::try_write_vectored` takes `&self`) while
//! the session reads and writes through this type. The bytes hyper had read
//! past the upgrade request (often the auth frame) are replayed first. If
//! the upgraded stream is not a plain `TcpStream` (not the case with this
//! listener), hyper's own is used, without write-through.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the public listener's upgrade hands over.
pub enum Upgrade {
    /// The shared TCP socket; `early` holds bytes read past the upgrade
    /// request, replayed first (boxed: usually none, and then 8 bytes).
    Tcp {
        socket: Arc<TcpStream>,
        early: Option<Box<[u8]>>,
    },
    /// Any other upgraded stream (vectored writes go through to `writev`).
    Other(TokioIo<Upgraded>),
}

impl Upgrade {
    pub fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Upgrade::Tcp {
                socket: Arc::new(parts.io.into_inner()),
                early: (!parts.read_buf.is_empty()).then(|| parts.read_buf.to_vec().into()),
            },
            Err(upgraded) => Upgrade::Other(TokioIo::new(upgraded)),
        }
    }

    pub(super) fn socket(&self) -> Option<Arc<TcpStream>> {
        match self {
            Upgrade::Tcp { socket, .. } => Some(Arc::clone(socket)),
            Upgrade::Other(_) => None,
        }
    }
}

impl AsyncRead for Upgrade {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgrade::Other(io) => Pin::new(io).poll_read(cx, buf),
            Upgrade::Tcp { socket, early } => {
                if let Some(bytes) = early.take() {
                    let n = bytes.len().min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    if n < bytes.len() {
                        *early = Some(bytes[n..].into());
                    }
                    return Poll::Ready(Ok(()));
                }
                loop {
                    ready!(socket.poll_read_ready(cx))?;
                    match socket.try_read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(()));
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Upgrade {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upgrade::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Upgrade::Tcp { socket, .. } => loop {
                ready!(socket.poll_write_ready(cx))?;
                match socket.try_write_vectored(bufs) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    result => return Poll::Ready(result),
                }
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upgrade::Other(io) => io.is_write_vectored(),
            Upgrade::Tcp { .. } => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgrade::Other(io) => Pin::new(io).poll_flush(cx),
            Upgrade::Tcp { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upgrade::Other(io) => Pin::new(io).poll_shutdown(cx),
            // The FIN; the hub's handle stays valid (its writes then fail).
            Upgrade::Tcp { socket, .. } => {
                Poll::Ready(socket2::SockRef::from(&**socket).shutdown(Shutdown::Write))
            }
        }
    }
}
