//! Real `redis-server` processes on free loopback ports (plain TCP, TLS with
//! a throw-away CA, a unix socket), killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// A throw-away `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    kind: Kind,
    child: Option<Child>,
}

enum Kind {
    Plain,
    /// TLS only (no plain port), certificates signed by a CA of the test's
    /// own; `clients` = client certificates required (mutual TLS).
    Tls {
        certs: TlsFiles,
        clients: bool,
    },
    /// A unix socket only (no TCP port).
    Unix {
        socket: PathBuf,
    },
}

/// A throw-away CA and a server certificate for 127.0.0.1 / localhost,
/// made with the `openssl` command line.
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("tls dir");
        let ca = new_ca(dir, "ca");
        let (cert, key) = sign(
            dir,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        TlsFiles {
            dir: dir.to_path_buf(),
            ca,
            cert,
            key,
        }
    }

    /// A client certificate and key signed by this CA (for mutual TLS).
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        sign(
            &self.dir,
            "client",
            "/CN=skywave test client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
    }

    /// Another CA, which did not sign the server's certificate.
    pub fn unrelated_ca(&self) -> PathBuf {
        new_ca(&self.dir, "other-ca")
    }
}

/// A key and a certificate for `subject`, signed by `dir/ca.*`, with the
/// X.509 extensions `extensions`.
fn sign(dir: &Path, name: &str, subject: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(&ext, extensions).expect("ext file");
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &path(&key),
        "-out",
        &path(&csr),
        "-subj",
        subject,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-CA",
        &path(&dir.join("ca.pem")),
        "-CAkey",
        &path(&dir.join("ca.key")),
        "-CAcreateserial",
        "-out",
        &path(&cert),
        "-days",
        "2",
        "-extfile",
        &path(&ext),
    ]);
    (cert, key)
}

fn new_ca(dir: &Path, name: &str) -> PathBuf {
    let pem = dir.join(format!("{name}.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &path(&dir.join(format!("{name}.key"))),
        "-out",
        &path(&pem),
        "-days",
        "2",
        "-subj",
        &format!("/CN=skywave test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    pem
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed for the TLS tests (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer::reserved();
        server.restart();
        server
    }

    /// A port where nothing listens yet (for a Redis that starts later).
    pub fn reserved() -> RedisServer {
        RedisServer {
            port: free_port(),
            kind: Kind::Plain,
            child: None,
        }
    }

    /// A Redis that speaks TLS only, with certificates from `certs`;
    /// `clients`: it also requires a client certificate from the same CA.
    pub fn start_tls(certs: TlsFiles, clients: bool) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            kind: Kind::Tls { certs, clients },
            child: None,
        };
        server.restart();
        server
    }

    /// A Redis on a unix socket in `dir`, with no TCP port.
    pub fn start_unix(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).expect("socket dir");
        let mut server = RedisServer {
            port: 0,
            kind: Kind::Unix {
                socket: dir.join("redis.sock"),
            },
            child: None,
        };
        server.restart();
        server
    }

    /// The URL a node is configured with.
    pub fn url(&self) -> String {
        match &self.kind {
            Kind::Plain => format!("redis://127.0.0.1:{}/0", self.port),
            Kind::Tls { .. } => format!("rediss://127.0.0.1:{}/0", self.port),
            Kind::Unix { socket } => format!("unix://{}?db=0", socket.display()),
        }
    }

    pub fn tls(&self) -> Option<&TlsFiles> {
        match &self.kind {
            Kind::Tls { certs, .. } => Some(certs),
            _ => None,
        }
    }

    /// Starts (again) with the same address and waits until it answers.
    pub fn restart(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match &self.kind {
            Kind::Plain => args.extend(["--port".to_string(), port]),
            Kind::Tls { certs, clients } => args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-cert-file",
                    &path(&certs.cert),
                    "--tls-key-file",
                    &path(&certs.key),
                    "--tls-ca-cert-file",
                    &path(&certs.ca),
                    "--tls-auth-clients",
                    if *clients { "yes" } else { "no" },
                ]
                .map(String::from),
            ),
            Kind::Unix { socket } => {
                let _ = std::fs::remove_file(socket);
                args.extend(
                    [
                        "--port",
                        "0",
                        "--unixsocket",
                        &path(socket),
                        "--unixsocketperm",
                        "700",
                    ]
                    .map(String::from),
                )
            }
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server must be installed for the cluster tests (scripts/test installs it)",
            );
        self.child = Some(child);
        for _ in 0..200 {
            let up = match &self.kind {
                Kind::Unix { socket } => std::os::unix::net::UnixStream::connect(socket).is_ok(),
                _ => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start at {}", self.url());
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that hangs without closing connections.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// Stops the server now and lets it go on after `after`, from a timer of
    /// its own (the caller keeps running meanwhile).
    pub fn stall_for(&self, after: Duration) {
        self.pause(true);
        if let Some(child) = &self.child {
            let pid = child.id().to_string();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                let _ = Command::new("kill").args(["-CONT", &pid]).status();
            });
        }
    }

    /// A client connection (plain TCP servers only).
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.pause(false);
        self.kill9();
    }
}

/// Runs one command whose answer does not matter (`CONFIG SET …`,
/// `CLIENT KILL …`) on `conn`, failing the test if Redis refuses it.
pub async fn admin(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) {
    let (name, rest) = args.split_first().expect("a command");
    let _: redis::Value = redis::cmd(name)
        .arg(rest)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
}
