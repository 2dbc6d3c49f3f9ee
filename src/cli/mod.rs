//! The command line: its arguments (clap), the Go worker's spellings of
//! them, and one module per command. `main.rs` parses and dispatches; the
//! library does the work, so a command here is only start-up and printing.

mod check;
mod discovery;
mod healthcheck;
mod listen;
mod run;
mod token;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use check::check_config;
pub use discovery::Discovery;
pub use healthcheck::healthcheck;
pub use listen::listen;
pub use run::run;
pub use token::token;

#[derive(Parser)]
#[command(name = "skywave", version = skywave::version(), about = "WebSocket event fan-out worker (drop-in replacement for wavelog_worker)")]
pub struct Cli {
    /// YAML config file (the Go worker's `-config PATH` works too). Without
    /// it, `./config.yaml` is read if it exists (as the Go worker does);
    /// otherwise skywave runs on built-in single-instance defaults.
    #[arg(long, short = 'c', global = true, env = "SKYWAVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Without a configured worker_secret, generate one for this run and
    /// print it (for trying things out; implied when run from a terminal).
    #[arg(long, global = true)]
    pub generate_secret: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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

/// Accepts the Go flag spelling `-config PATH` / `-config=PATH`.
pub fn go_style_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|arg| match arg.as_str() {
        "-config" => "--config".to_string(),
        _ if arg.starts_with("-config=") => format!("-{arg}"),
        _ => arg,
    })
    .collect()
}

/// Writes to stdout; a closed pipe (`skywave check-config F | head`) ends the
/// output quietly instead of panicking as `println!` would.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn args(given: &[&str]) -> Vec<String> {
        go_style_args(given.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn the_go_spellings_of_the_config_flag() {
        assert_eq!(
            args(&["skywave", "-config", "c.yaml"]),
            ["skywave", "--config", "c.yaml"]
        );
        assert_eq!(
            args(&["skywave", "-config=c.yaml"]),
            ["skywave", "--config=c.yaml"]
        );
        let ours = ["skywave", "check-config", "-c", "c.yaml", "--strict"];
        assert_eq!(args(&ours), ours);
        let cli = Cli::parse_from(args(&[
            "skywave", "-config", "c.yaml", "token", "--topic", "t",
        ]));
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("c.yaml")));
        assert!(matches!(cli.command, Some(Command::Token { .. })));
    }

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
