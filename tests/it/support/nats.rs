//! Real `nats-server`s with JetStream on loopback, killed on drop: one
//! server, or a cluster of three joined by routes (JetStream clustered).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::redis_ha::Proc;
use super::{eventually, free_port};

pub struct NatsServer {
    pub proc: Proc,
    /// The monitoring port (`/connz`, `/jsz`).
    pub monitor: u16,
    pub store: PathBuf,
}

impl NatsServer {
    /// One server with JetStream, its store in `dir`.
    pub fn start(dir: &Path) -> NatsServer {
        Self::with_args(dir, "nats-1", Vec::new())
    }

    fn with_args(dir: &Path, name: &str, extra: Vec<String>) -> NatsServer {
        let (port, monitor) = super::two_free_ports();
        let store = dir.join(name);
        std::fs::create_dir_all(&store).expect("store dir");
        let mut args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
            "-n",
            name,
            "-js",
            "-sd",
            &store.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra);
        NatsServer {
            proc: Proc::new("nats-server", port, args),
            monitor,
            store,
        }
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts again on the same port; `keep_store: false` starts it with
    /// its JetStream store gone (a new disk).
    pub fn restart(&mut self, keep_store: bool) {
        if !keep_store {
            let _ = std::fs::remove_dir_all(&self.store);
            std::fs::create_dir_all(&self.store).expect("store dir");
        }
        self.proc.start();
    }

    /// The names of the clients connected to this server (`/connz`).
    pub async fn clients(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz", self.monitor);
        let Ok(body) = http_get(&url).await else {
            return Vec::new();
        };
        let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        connz["connections"]
            .as_array()
            .map(|connections| {
                connections
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether JetStream answers on this server (`/jsz` has no error).
    pub async fn jetstream_ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", self.monitor);
        matches!(http_get(&url).await, Ok(body) if body.contains("ok"))
    }
}

/// Three servers in one cluster (routes to each other), JetStream clustered.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub async fn start(dir: &Path) -> NatsCluster {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let servers: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(i, port)| {
                NatsServer::with_args(
                    dir,
                    &format!("nats-{}", i + 1),
                    vec![
                        "--cluster_name".into(),
                        "skywave-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{port}"),
                        "--routes".into(),
                        route_urls.clone(),
                    ],
                )
            })
            .collect();
        let cluster = NatsCluster { servers };
        cluster.wait_ready().await;
        cluster
    }

    /// Every running server reports JetStream healthy (a meta leader).
    pub async fn wait_ready(&self) {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the NATS cluster has JetStream",
            || async {
                for server in self.servers.iter().filter(|s| s.proc.running()) {
                    if !server.jetstream_ready().await {
                        return Err(format!("nats on {} not ready", server.port()));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// All servers, comma-separated, as an operator lists them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A plain HTTP/1.0 GET on loopback, for the monitoring endpoints.
async fn http_get(url: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("not http")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut body = String::new();
        stream
            .read_to_string(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            body.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap_or(Err("timed out".to_string()))
}
