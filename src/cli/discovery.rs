//! Which config file applies (the Go worker's `./config.yaml` default), and
//! loading it with the messages an operator needs when that fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use skywave::config::{env_name, Config, ConfigError, Loaded, Secret};

/// The file name the Go worker's `-config` flag defaults to, in the working
/// directory (its image runs in `/app`, so operators mount `/app/config.yaml`).
const DEFAULT_CONFIG_FILE: &str = "config.yaml";

/// Which config file applies, and where one was looked for.
pub struct Discovery {
    path: Option<PathBuf>,
    pub looked_at: Vec<PathBuf>,
}

impl Discovery {
    pub fn find(flag: Option<&Path>) -> Discovery {
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

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// For the start-up line: which file was read.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "none (built-in defaults and SKYWAVE_* variables)".to_string(),
        }
    }
}

/// The configuration `discovery` names, or exit status 2 after saying on
/// stderr what is wrong (and, for a missing secret, where a file was sought).
pub fn load(discovery: &Discovery, generate_secret: bool) -> Result<Loaded, ExitCode> {
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
pub fn configured_secret(discovery: &Discovery) -> Result<Secret, ExitCode> {
    load(discovery, false).map(|loaded| loaded.config.worker_secret)
}
