//! `skywave check-config`: validates a file and prints the effective
//! settings, secrets redacted, for operators and CI (`--strict`).

use std::process::ExitCode;

use super::discovery::{load, Discovery};
use super::print;

pub fn check_config(discovery: &Discovery, strict: bool) -> ExitCode {
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
