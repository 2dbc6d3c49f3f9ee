//! The `skywave` command: runs the worker, or one of the operator helpers
//! (`check-config`, `token`, `gen-secret`, `listen`, `healthcheck`). This
//! file parses the arguments and dispatches; the commands live in `cli/`.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, Discovery};
use skywave::config::Secret;

/// jemalloc, with its options compiled in from `.cargo/config.toml`: freed
/// memory goes back to the system within about a second.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::go_style_args(std::env::args()));
    let flag = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            cli::run(&Discovery::find(flag), cli.generate_secret || interactive)
        }
        Command::CheckConfig { path, strict } => {
            cli::check_config(&Discovery::find(path.as_deref().or(flag)), strict)
        }
        Command::Token {
            topic,
            user,
            ttl,
            jwt,
        } => cli::token(&Discovery::find(flag), &topic, user, &ttl, jwt),
        Command::GenSecret => {
            cli::print(Secret::generate().expose());
            ExitCode::SUCCESS
        }
        Command::Healthcheck { url } => cli::healthcheck(&Discovery::find(flag), url),
        Command::Listen {
            topic,
            url,
            token,
            user,
        } => cli::listen(&Discovery::find(flag), &topic, &url, token, user),
    }
}
