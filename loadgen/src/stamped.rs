//! When bytes reached a receiving socket, as the kernel saw it.
//!
//! On loopback the receivers share the two cores with the sender, so the
//! moment a receiver *reads* a frame includes its own wait for a CPU (10,000
//! receivers take turns). A remote browser has its own CPU; what the
//! server controls ends when the frame is in the browser's socket. Every
//! socket here asks the kernel for receive timestamps (`SO_TIMESTAMPNS`):
//! each read returns, besides the bytes, the time the newest segment it
//! read was taken in by the receiving socket (on loopback: during the
//! sender's own `write(2)`). A frame's *arrival* is that stamp of the read
//! that completed it, so a read that also took later segments stamps every
//! frame in it with the latest one: arrivals are never early, at worst late.
//!
//! The stamp is on the real-time clock; it is moved to the monotonic clock
//! (the one `Instant` and the frames' `t` use) by its age at the read, so a
//! clock step between two reads does not shift it.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP stream whose reads keep the kernel's receive stamp of the newest
/// segment they took.
pub struct Stamped {
    inner: TcpStream,
    /// CLOCK_MONOTONIC ns of the last stamped read; 0 before the first.
    arrived_ns: u64,
    control: Vec<u8>,
}

impl Stamped {
    pub fn new(inner: TcpStream) -> io::Result<Stamped> {
        setsockopt(&inner, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        Ok(Stamped {
            inner,
            arrived_ns: 0,
            control: nix::cmsg_space!(TimeSpec),
        })
    }

    /// When the newest bytes read so far reached the socket (CLOCK_MONOTONIC
    /// ns; 0 if no read carried a stamp yet, see [`Stamping`]).
    pub fn arrived_ns(&self) -> u64 {
        self.arrived_ns
    }
}

/// Receive stamping kept on for the whole run. The kernel switches it on
/// for the host in deferred work when the first socket asks for it (and
/// off when the last such socket closes), so without this the first
/// segments of a run, or of each scenario, could come unstamped.
pub struct Stamping {
    _pair: (Stamped, TcpStream),
}

impl Stamping {
    /// Returns once a read on a loopback pair of its own carried a stamp.
    pub async fn on() -> io::Result<Stamping> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let mut stamped = Stamped::new(client)?;
        let mut byte = [0u8; 1];
        for _ in 0..200 {
            server.write_all(b"s").await?;
            stamped.read_exact(&mut byte).await?;
            if stamped.arrived_ns() != 0 {
                return Ok(Stamping {
                    _pair: (stamped, server),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(io::Error::other(
            "the kernel stamped no received segment within 1 s (SO_TIMESTAMPNS)",
        ))
    }
}

/// A run's time zero on CLOCK_MONOTONIC: frames carry `t` as ns after it,
/// and reads and arrivals are measured after it too.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub ns: u64,
}

impl Epoch {
    pub fn now() -> io::Result<Epoch> {
        Ok(Epoch {
            ns: monotonic_ns()?,
        })
    }

    pub fn elapsed_ns(&self) -> io::Result<u64> {
        Ok(monotonic_ns()?.saturating_sub(self.ns))
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads on Linux.
pub fn monotonic_ns() -> io::Result<u64> {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(nanos)
        .map_err(io::Error::from)
}

fn nanos(time: TimeSpec) -> u64 {
    (time.tv_sec().max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(time.tv_nsec().max(0) as u64)
}

/// A real-time receive stamp on the monotonic clock: now, less its age.
fn on_monotonic(stamp: TimeSpec) -> io::Result<u64> {
    let real_now = clock_gettime(ClockId::CLOCK_REALTIME).map_err(io::Error::from)?;
    let mono_now = monotonic_ns()?;
    let age = nanos(real_now).saturating_sub(nanos(stamp));
    Ok(mono_now.saturating_sub(age))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let control = &mut this.control;
            let unfilled = buf.initialize_unfilled();
            let read = this.inner.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(unfilled)];
                let message = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::empty())?;
                let mut stamp = None;
                for cmsg in message.cmsgs()? {
                    if let ControlMessageOwned::ScmTimestampns(time) = cmsg {
                        stamp = Some(time);
                    }
                }
                Ok((message.bytes, stamp))
            });
            match read {
                Ok((n, stamp)) => {
                    if let Some(stamp) = stamp {
                        this.arrived_ns = on_monotonic(stamp)?;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // try_io cleared the readiness: wait for the next.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp lies between the write and the read that took the bytes,
    /// and later writes give later stamps.
    #[tokio::test]
    async fn a_read_carries_the_time_its_bytes_arrived() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let _on = Stamping::on().await?;
        let mut stamped = Stamped::new(client)?;
        let mut stamps = Vec::new();
        for _ in 0..3 {
            let before = monotonic_ns()?;
            server.write_all(b"frame").await?;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut got = [0u8; 5];
            stamped.read_exact(&mut got).await?;
            let after = monotonic_ns()?;
            let arrived = stamped.arrived_ns();
            assert!(
                before <= arrived,
                "stamp {arrived} before the write at {before}"
            );
            // Read 20 ms after the write: the stamp is the arrival, not the read.
            assert!(
                arrived + 10_000_000 <= after,
                "stamp {arrived} is the read at {after}"
            );
            stamps.push(arrived);
        }
        assert!(
            stamps.windows(2).all(|pair| pair[0] < pair[1]),
            "{stamps:?}"
        );
        Ok(())
    }
}
