//! The real `skywave` binary as an operator runs it: its own working
//! directory, flags and environment, stderr kept in a file so the test can
//! read the log while it runs; killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{two_free_ports, NodeClient, SECRET};

pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// A `Command` for the binary, run in `dir` with no `SKYWAVE_*` variable
    /// of the test's own environment leaking in.
    pub fn command(dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_skywave"));
        command.current_dir(dir).stdin(Stdio::null());
        for (name, _) in std::env::vars() {
            if name.starts_with("SKYWAVE_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
    }

    /// Starts `command` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start the skywave binary");
        Process {
            child: Some(child),
            log,
        }
    }

    /// Everything the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `text`.
    pub async fn wait_for_output(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the output within {within:?}:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the exit (at most `within`); `None` if still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `bytes` to the process's stdin (when it was spawned piped).
    pub fn type_in(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.child.as_mut().and_then(|child| child.stdin.as_mut());
        let stdin = stdin.expect("spawned with a piped stdin");
        stdin.write_all(bytes).expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Waits until something accepts connections on each of `ports`; the
    /// output if the process exits first (or after 10 s).
    pub async fn wait_listening(&mut self, ports: &[u16]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in ports {
            while !accepts(port).await {
                if self.has_exited() || Instant::now() >= deadline {
                    return Err(format!("port {port} not open:\n{}", self.output()));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        // A port another process holds answers too; the binary has exited.
        if self.has_exited() {
            return Err(format!("exited:\n{}", self.output()));
        }
        Ok(())
    }

    /// [`wait_listening`](Self::wait_listening), failing the test with the
    /// process's log.
    pub async fn expect_listening(&mut self, ports: &[u16]) {
        if let Err(log) = self.wait_listening(ports).await {
            panic!("the binary did not start: {log}");
        }
    }

    fn has_exited(&mut self) -> bool {
        let running = self.child.as_mut().map(|child| child.try_wait());
        !matches!(running, Some(Ok(None)))
    }

    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub async fn wait_port(port: u16) {
    for _ in 0..400 {
        if accepts(port).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} never opened");
}

/// Whether something accepts connections on 127.0.0.1:`port` now.
async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A fresh directory under the system's temp dir.
pub fn tempdir(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "skywave-it-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The real binary started the way the Go worker's docs run it: in a working
/// directory holding `config.yaml`, with no flags.
pub struct BinaryNode {
    pub client: NodeClient,
    pub process: Process,
    pub dir: PathBuf,
}

impl std::ops::Deref for BinaryNode {
    type Target = NodeClient;
    fn deref(&self) -> &NodeClient {
        &self.client
    }
}

impl BinaryNode {
    /// Writes `<dir>/config.yaml` (free loopback ports, the test secret,
    /// then `extra`) and starts the binary there with no arguments.
    ///
    /// A port found free can be taken by another test's server before the
    /// binary binds it: the binary then exits naming the port ("Address
    /// already in use"), and it is started again on two new ports (at most
    /// five tries). Any other early exit fails the test with its log.
    pub async fn start(dir: &Path, name: &str, extra: &str) -> BinaryNode {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        for _ in 0..5 {
            let (ws, internal) = two_free_ports();
            std::fs::write(
                dir.join("config.yaml"),
                format!(
                    "ws_bind: 127.0.0.1\nws_port: {ws}\ninternal_bind: 127.0.0.1\n\
                     internal_port: {internal}\nworker_secret: \"{SECRET}\"\n{extra}\n"
                ),
            )
            .expect("config.yaml");
            let mut process = Process::spawn(Process::command(&dir), &dir, "skywave");
            match process.wait_listening(&[internal, ws]).await {
                Ok(()) => {
                    return BinaryNode {
                        client: NodeClient {
                            ws: SocketAddr::from(([127, 0, 0, 1], ws)),
                            internal: SocketAddr::from(([127, 0, 0, 1], internal)),
                        },
                        process,
                        dir,
                    }
                }
                Err(output) if output.contains("Address already in use") => continue,
                Err(output) => panic!("the binary in {} did not start:\n{output}", dir.display()),
            }
        }
        panic!("five pairs of free ports were all taken before the binary bound them");
    }
}

/// Two real binaries in `dir` with the same `extra` settings: both join,
/// and a publish on the first reaches a socket on the second.
pub async fn binary_pair(dir: &Path, extra: &str, what: &str) -> (BinaryNode, BinaryNode) {
    let a = BinaryNode::start(dir, "a", extra).await;
    let b = BinaryNode::start(dir, "b", extra).await;
    a.client.wait_cluster(2, Duration::from_secs(15)).await;
    b.client.wait_cluster(2, Duration::from_secs(15)).await;
    a.client.register("binary", true).await;
    let mut socket = b.client.socket("binary", 9).await;
    assert_eq!(
        a.client
            .publish("binary", &serde_json::json!({"seq": 1}))
            .await,
        200
    );
    socket
        .expect_push(&serde_json::json!({"seq": 1}), what)
        .await;
    (a, b)
}
