//! Wiring: builds the node from a config, binds both listeners (port 0 works,
//! for tests), and runs everything until a shutdown future resolves.
//!
//! Shutdown order: leave the cluster roster, stop accepting and refuse new
//! publishes (503), deliver what was accepted and let every socket take
//! what is queued for it (2 s for the whole node, `node::SHUTDOWN_DRAIN`),
//! close every socket with 1001 (sessions watch the node's cancellation
//! token), then wait (bounded) for every tracked task, upgraded sockets
//! included.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

mod serve;

use self::serve::{serve_connections, Edge};

use crate::config::{redact_nats_url, redact_url, Config};
use crate::node::Node;

/// How long shutdown waits for sockets and tasks before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How long open internal API connections keep answering (503) after
/// shutdown began, so a publisher's late request gets an answer, not a reset.
const INTERNAL_DRAIN: Duration = Duration::from_secs(1);
/// How long the internal API's connections get at shutdown: the drain, a
/// request still in flight, then the lingering close (`serve::LINGER`).
const INTERNAL_GRACE: Duration = Duration::from_secs(5);
const LISTEN_BACKLOG: i32 = 4096;

pub struct App {
    node: Arc<Node>,
    ws_listener: TcpListener,
    /// Kept as a std listener: it is served on its own thread and runtime.
    internal_listener: std::net::TcpListener,
}

impl App {
    /// Builds the node and binds both listeners; nothing is served or
    /// spawned yet.
    pub async fn bind(config: Config) -> anyhow::Result<App> {
        let config = crate::descriptors::fit(config);
        let node = match (&config.redis_url, &config.nats_url) {
            (Some(url), _) => Node::new(config.clone())
                .with_context(|| format!("redis_url {}", redact_url(url.expose())))?,
            (None, Some(url)) => Node::new(config.clone())
                .with_context(|| format!("nats_url {}", redact_nats_url(url.expose())))?,
            (None, None) => Node::new(config.clone())?,
        };
        let ws_listener = bind_listener(&config.ws_bind, config.ws_port)
            .and_then(TcpListener::from_std)
            .with_context(|| {
                format!(
                    "cannot listen on ws_bind {:?} ws_port {}",
                    config.ws_bind, config.ws_port
                )
            })?;
        let internal_listener = bind_listener(&config.internal_bind, config.internal_port)
            .with_context(|| {
                format!(
                    "cannot listen on internal_bind {:?} internal_port {}",
                    config.internal_bind, config.internal_port
                )
            })?;
        Ok(App {
            node,
            ws_listener,
            internal_listener,
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn internal_addr(&self) -> SocketAddr {
        self.internal_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This process's node id (also the envelopes' `origin_id`).
    pub fn node_id(&self) -> &str {
        self.node.node_id()
    }

    pub fn node(&self) -> Arc<Node> {
        Arc::clone(&self.node)
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully. Every
    /// task of the node starts here, on its tracker.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let App {
            node,
            ws_listener,
            internal_listener,
        } = self;
        node.start();
        node.tasks().spawn(sweep_registry(Arc::clone(&node)));
        let public = crate::ws::router(Arc::clone(&node));
        node.tasks()
            .spawn(serve_http(ws_listener, public, Arc::clone(&node)));
        let internal = serve_internal(internal_listener, Arc::clone(&node))
            .context("cannot start the internal API thread")?;

        shutdown.await;
        tracing::info!("shutting down: flushing every socket, then closing it with 1001");
        node.stop().await;
        if tokio::time::timeout(SHUTDOWN_GRACE, node.tasks().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = node.tasks().len(),
                "shutdown grace period over; exiting with tasks still running"
            );
        }
        let unflushed = node
            .metrics()
            .shutdown_unflushed
            .load(std::sync::atomic::Ordering::Relaxed);
        if unflushed > 0 {
            tracing::warn!(
                sockets = unflushed,
                "shutdown: sockets closed before they took every queued frame"
            );
        }
        // The internal thread returns once its in-flight requests are
        // answered (bounded by INTERNAL_GRACE); it is joined, not dropped.
        let _ = tokio::task::spawn_blocking(move || internal.join()).await;
        Ok(())
    }
}

/// Serves the internal API on a thread and runtime of its own, so a publish
/// is never queued behind socket work: under a 10,000-socket fan-out its p99
/// dropped from ~10 ms to well under 1 ms this way.
fn serve_internal(
    listener: std::net::TcpListener,
    node: Arc<Node>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("skywave-internal".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "internal listener failed");
                        return;
                    }
                };
                let router = crate::http::router(Arc::clone(&node));
                let connections = TaskTracker::new();
                let edge = Edge::Internal {
                    drain: INTERNAL_DRAIN,
                };
                serve_connections(listener, router, &node, &connections, edge).await;
                // Requests in flight when shutdown began are answered before
                // this runtime (and with it their tasks) goes away.
                connections.close();
                if tokio::time::timeout(INTERNAL_GRACE, connections.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        remaining = connections.len(),
                        "internal API requests still running at exit"
                    );
                }
            });
        })
}

/// The public listener: connections (and upgraded sockets) on the node's
/// tracker, which shutdown waits for, each with its kernel send queue
/// bounded (`ws::UNSENT_LIMIT`).
async fn serve_http(listener: TcpListener, router: axum::Router, node: Arc<Node>) {
    let edge = Edge::Public {
        unsent_limit: crate::ws::UNSENT_LIMIT,
    };
    serve_connections(listener, router, &node, node.tasks(), edge).await;
}

/// Frees expired registrations every second, so expiry releases memory.
async fn sweep_registry(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => { node.registry().sweep(); }
            _ = node.shutdown().cancelled() => return,
        }
    }
}

/// Binds a listener; an empty host means every interface, IPv4 and IPv6.
fn bind_listener(host: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    match host {
        "" => bind_addr(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        )
        .or_else(|_| {
            bind_addr(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                false,
            )
        }),
        "localhost" => bind_addr(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            false,
        ),
        other => {
            let ip: IpAddr = other.parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address")
            })?;
            bind_addr(SocketAddr::new(ip, port), false)
        }
    }
}

fn bind_addr(addr: SocketAddr, dual_stack: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
