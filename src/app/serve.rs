//! Serving HTTP/1.1 connections on both listeners: the accept loop, the
//! public connections (upgraded to WebSockets) and the internal API's
//! connections, which close *lingering*.
//!
//! Lingering close: when the server ends an internal connection itself (an
//! answer with `Connection: close`, as every 503 after shutdown began has,
//! or the end of the drain at shutdown) while the client has already sent
//! more requests (a pipelining or hurried publisher), closing the socket
//! with those unread makes the kernel answer with a reset, and a reset
//! discards what the client had not read yet: the last answers, 200s of
//! publishes that were delivered among them. So the socket's sending side
//! is shut first (the client reads every answer, then end of stream), what
//! still arrives is read and dropped, and the socket is closed once the
//! client closed its side or after [`LINGER`] (as nginx's `lingering_close`
//! and Apache's lingering close do). Requests read that way get no answer
//! and were not carried out.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::node::Node;

/// How long a connection the server ends keeps reading (and dropping) what
/// the client still sends, so the client can read every answer first.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// How long a connection with a request in flight gets once a graceful
/// shutdown was asked for, before it is dropped.
const GRACEFUL: Duration = Duration::from_secs(1);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Edge {
    /// Browsers: upgrades enabled, each socket's not-yet-sent kernel queue
    /// bounded to `unsent_limit` bytes.
    Public { unsent_limit: u32 },
    /// The publisher: open connections keep answering (503) for `drain`
    /// after shutdown began, and close lingering.
    Internal { drain: Duration },
}

/// Accepts HTTP/1.1 connections for `router` with a deadline on the request
/// head (slow-loris), each on `tasks`, until shutdown; then lets open
/// connections finish as their [`Edge`] says.
pub(super) async fn serve_connections(
    listener: TcpListener,
    router: axum::Router,
    node: &Node,
    tasks: &TaskTracker,
    edge: Edge,
) {
    let header_timeout = node.config().limits.handshake_timeout;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = node.shutdown().cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let router = router.clone();
        let shutdown = node.shutdown().clone();
        match edge {
            Edge::Public { unsent_limit } => {
                // Linux only; elsewhere the kernel's own sizing stays.
                let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(unsent_limit);
                tasks.spawn(serve_public(builder, stream, peer, router, shutdown));
            }
            Edge::Internal { drain } => {
                tasks.spawn(serve_internal(
                    builder, stream, peer, router, shutdown, drain,
                ));
            }
        }
    }
}

/// One browser connection: upgrades enabled; at shutdown it is asked to
/// end gracefully (the sockets themselves close with 1001 on their own).
async fn serve_public(
    builder: http1::Builder,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACEFUL, connection).await;
        }
    }
}

/// One publisher connection. Hyper does not shut the socket down itself:
/// whenever the connection ends, the socket is closed lingering (see the
/// module text). After shutdown began, requests that still arrive during
/// `drain` are answered (503), then the connection ends once its request
/// in flight is answered.
async fn serve_internal(
    builder: http1::Builder,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: axum::Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // Boxed: hyper hands the socket back only for `Unpin` futures.
        Box::pin(router.clone().oneshot(request))
    });
    let mut connection = builder.serve_connection(TokioIo::new(stream), service);
    let ended = {
        let serving = poll_fn(|cx| connection.poll_without_shutdown(cx));
        tokio::select! {
            ended = serving => Some(ended),
            _ = shutdown.cancelled() => None,
        }
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            let serving = poll_fn(|cx| connection.poll_without_shutdown(cx));
            match tokio::time::timeout(drain, serving).await {
                Ok(ended) => ended,
                Err(_) => {
                    Pin::new(&mut connection).graceful_shutdown();
                    let serving = poll_fn(|cx| connection.poll_without_shutdown(cx));
                    match tokio::time::timeout(GRACEFUL, serving).await {
                        Ok(ended) => ended,
                        // A request still running: dropped with the socket.
                        Err(_) => return,
                    }
                }
            }
        }
    };
    // An error (the client reset, a malformed request hyper answered
    // itself) leaves nothing worth lingering for.
    if ended.is_ok() {
        linger(connection.into_parts().io.into_inner()).await;
    }
}

/// Shuts the sending side, then reads and drops what still arrives until
/// the client closes its side or [`LINGER`] is over; the socket closes when
/// it is dropped.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(read) = stream.read(&mut scratch).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}
