//! The `skywave` command: runs the worker, or one of the operator helpers
//! (`check-config`, `token`, `gen-secret`, `healthcheck`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use skywave::config::{
    env_name, format_go_duration, parse_go_duration, redact_url, Config, ConfigError, Loaded,
    Secret,
};

#[derive(Parser)]
#[command(name = "skywave", version = skywave::version(), about = "WebSocket event fan-out worker (drop-in replacement for wavelog_worker)")]
struct Cli {
    /// YAML config file (the Go worker's `-config PATH` works too). Without
    /// it, `./config.yaml` is read if it exists (as the Go worker does);
    /// otherwise skywave runs on built-in single-instance defaults.
    #[arg(long, short = 'c', global = true, env = "SKYWAVE_CONFIG")]
    config: Option<PathBuf>,
    /// Without a configured worker_secret, generate one for this run and
    /// print it (for trying things out; implied when run from a terminal).
    #[arg(long, global = true)]
    generate_secret: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The file name the Go worker's `-config` flag defaults to, in the working
/// directory (its image runs in `/app`, so operators mount `/app/config.yaml`).
const DEFAULT_CONFIG_FILE: &str = "config.yaml";

/// Which config file applies, and where one was looked for.
struct Discovery {
    path: Option<PathBuf>,
    looked_at: Vec<PathBuf>,
}

impl Discovery {
    fn find(flag: Option<&Path>) -> Discovery {
        if let Some(path) = flag {
            return Discovery {
                path: Some(path.to_path_buf()),
                looked_at: vec![path.to_path_buf()],
            };
        }
        let default = std::env::current_dir()
            .map(|dir| dir.join(DEFAULT_CONFIG_FILE))
            .unwrap_or_else(|_| PathBuf::from(DEFAULT_CONFIG_FILE));
        Discovery {
            path: default.is_file().then(|| default.clone()),
            looked_at: vec![default],
        }
    }

    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// For the start-up line: which file was read.
    fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "none (built-in defaults and SKYWAVE_* variables)".to_string(),
        }
    }
}

/// Writes to stdout; a closed pipe (`skywave check-config F | head`) ends the
/// output quietly instead of panicking as `println!` would.
fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default).
    Run,
    /// Validate a config file and print the effective settings.
    CheckConfig {
        /// The file to check (defaults to --config, then ./config.yaml).
        path: Option<PathBuf>,
        /// Exit non-zero on any warning too (an unknown key, a log_level typo), for CI.
        #[arg(long)]
        strict: bool,
    },
    /// Print a token for a topic, signed with the configured secret (for testing).
    Token {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1)]
        user: i64,
        /// Lifetime, as a Go duration.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Print an HS256 JWT instead of the Go worker's hex token.
        #[arg(long)]
        jwt: bool,
    },
    /// Print a fresh random secret (64 hex characters).
    GenSecret,
    /// Connect to a topic like a browser and print what arrives (for trying things out).
    Listen {
        #[arg(long)]
        topic: String,
        /// The public listener.
        #[arg(long, default_value = "ws://127.0.0.1:9000")]
        url: String,
        /// Token to send; by default one is signed with the configured secret.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 1)]
        user: i64,
    },
    /// Exit 0 if the local public listener answers /healthz (for container health checks).
    Healthcheck {
        /// Defaults to http://127.0.0.1:<ws_port>/healthz.
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(go_style_args(std::env::args()));
    let flag = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            run(&Discovery::find(flag), cli.generate_secret || interactive)
        }
        Command::CheckConfig { path, strict } => {
            check_config(&Discovery::find(path.as_deref().or(flag)), strict)
        }
        Command::Token {
            topic,
            user,
            ttl,
            jwt,
        } => token(&Discovery::find(flag), &topic, user, &ttl, jwt),
        Command::GenSecret => {
            print(Secret::generate().expose());
            ExitCode::SUCCESS
        }
        Command::Healthcheck { url } => healthcheck(&Discovery::find(flag), url),
        Command::Listen {
            topic,
            url,
            token,
            user,
        } => listen(&Discovery::find(flag), &topic, &url, token, user),
    }
}

/// Accepts the Go flag spelling `-config PATH` / `-config=PATH`.
fn go_style_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|arg| match arg.as_str() {
        "-config" => "--config".to_string(),
        _ if arg.starts_with("-config=") => format!("-{arg}"),
        _ => arg,
    })
    .collect()
}

fn load(discovery: &Discovery, generate_secret: bool) -> Result<Loaded, ExitCode> {
    Config::load(
        discovery.path(),
        &|name| std::env::var(name).ok(),
        generate_secret,
    )
    .map_err(|error| {
        eprintln!("skywave: {error}");
        if let ConfigError::Key { key, .. } = &error {
            if key == "worker_secret" && discovery.path().is_none() {
                let looked: Vec<String> = discovery
                    .looked_at
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                eprintln!(
                    "skywave: no config file found (looked for {}); mount one there, pass \
                     --config FILE, or set {}. To try skywave out with a throw-away secret, run it \
                     from a terminal or pass --generate-secret.",
                    looked.join(", "),
                    env_name("worker_secret")
                );
            }
        }
        ExitCode::from(2)
    })
}

/// The secret from the config file or environment, for the helpers that
/// sign tokens (a generated one would be of no use to them).
fn configured_secret(discovery: &Discovery) -> Result<Secret, ExitCode> {
    load(discovery, false).map(|loaded| loaded.config.worker_secret)
}

fn run(discovery: &Discovery, generate_secret: bool) -> ExitCode {
    let loaded = match load(discovery, generate_secret) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let config = loaded.config;
    skywave::telemetry::init(&config.log_level, config.log_format);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    if loaded.generated_secret {
        eprintln!(
            "\n*** WARNING: no worker_secret configured: generated one for this run only ***\n\
             *** worker_secret: {}\n\
             *** Use it to try things out; set worker_secret (or {}) for real use. ***\n",
            config.worker_secret.expose(),
            env_name("worker_secret"),
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("skywave: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let redis = match &config.redis_url {
        Some(url) => format!("{} (joining in the background)", redact_url(url.expose())),
        None => "none (single-instance mode)".to_string(),
    };
    let config_file = discovery.describe();
    runtime.block_on(async move {
        let app = match skywave::App::bind(config).await {
            Ok(app) => app,
            Err(error) => {
                tracing::error!("{error:#}");
                eprintln!("skywave: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            version = skywave::version(),
            ws = %app.ws_addr(),
            internal = %app.internal_addr(),
            config = %config_file,
            redis = %redis,
            node_id = %app.node_id(),
            "skywave listening"
        );
        match app.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!("{error:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn check_config(discovery: &Discovery, strict: bool) -> ExitCode {
    let Some(path) = discovery.path() else {
        eprintln!(
            "skywave check-config: no file to check (looked for {}); name one: skywave check-config PATH",
            discovery.looked_at.first().map_or_else(String::new, |p| p.display().to_string())
        );
        return ExitCode::from(2);
    };
    let loaded = match load(discovery, false) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    for warning in &loaded.warnings {
        print(&format!("warning: {warning}"));
    }
    if strict && !loaded.warnings.is_empty() {
        eprintln!(
            "skywave check-config: {}: {} warning(s), failing because of --strict",
            path.display(),
            loaded.warnings.len()
        );
        return ExitCode::from(1);
    }
    print(&format!("{}: OK", path.display()));
    print(&loaded.config.describe());
    print(match loaded.config.redis_url {
        Some(_) => "mode: cluster (falls back to running alone while Redis is unreachable)",
        None => "mode: single-instance (no redis_url)",
    });
    ExitCode::SUCCESS
}

fn token(discovery: &Discovery, topic: &str, user: i64, ttl: &str, jwt: bool) -> ExitCode {
    let secret = match configured_secret(discovery) {
        Ok(secret) => secret,
        Err(code) => return code,
    };
    let ttl: Duration = match parse_go_duration(ttl) {
        Ok(ttl) if !ttl.is_zero() => ttl,
        Ok(_) => {
            eprintln!("skywave token: --ttl must be greater than zero");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("skywave token: --ttl: {error}");
            return ExitCode::from(2);
        }
    };
    let secret = secret.expose().as_bytes();
    let expires = skywave::auth::unix_now() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let token = if jwt {
        match skywave::auth::sign_jwt(secret, user, topic, expires) {
            Ok(token) => token,
            Err(error) => {
                eprintln!("skywave token: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        skywave::auth::sign_hex_token(secret, user, topic, expires)
    };
    eprintln!(
        "token for topic {topic:?}, user {user}, valid for {}",
        format_go_duration(ttl)
    );
    print(&token);
    ExitCode::SUCCESS
}

/// A dependency-free HTTP/1.0 GET, so container images need no curl.
fn healthcheck(discovery: &Discovery, url: Option<String>) -> ExitCode {
    use std::io::Read;
    let url = url.unwrap_or_else(|| {
        // Only the port matters here: a secret is not needed to ask.
        let port = Config::load(discovery.path(), &|name| std::env::var(name).ok(), true)
            .map(|l| l.config.ws_port)
            .unwrap_or(9000);
        format!("http://127.0.0.1:{port}/healthz")
    });
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("healthcheck: only http:// URLs are supported");
        return ExitCode::from(2);
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let result = (|| -> std::io::Result<String> {
        use std::net::ToSocketAddrs;
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut response = String::new();
        stream.take(4096).read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response)
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") =>
        {
            print("healthy");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("unhealthy: {}", response.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("unhealthy: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn listen(
    discovery: &Discovery,
    topic: &str,
    url: &str,
    token: Option<String>,
    user: i64,
) -> ExitCode {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let token = match token {
        Some(token) => token,
        None => match configured_secret(discovery) {
            Ok(secret) => skywave::auth::sign_hex_token(
                secret.expose().as_bytes(),
                user,
                topic,
                skywave::auth::unix_now() + 86_400,
            ),
            Err(code) => return code,
        },
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .finish();
    let target = format!("{}/ws?{query}", url.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("skywave listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (mut socket, _) = match tokio_tungstenite::connect_async(target.as_str()).await {
            Ok(connected) => connected,
            Err(error) => {
                eprintln!("skywave listen: {target}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let auth = serde_json::json!({ "type": "auth", "token": token }).to_string();
        if let Err(error) = socket.send(Message::text(auth)).await {
            eprintln!("skywave listen: {error}");
            return ExitCode::FAILURE;
        }
        eprintln!("listening on {target} (Ctrl-C to stop)");
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => print(&text),
                Ok(Message::Close(frame)) => {
                    eprintln!("closed: {frame:?}");
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("skywave listen: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    })
}
