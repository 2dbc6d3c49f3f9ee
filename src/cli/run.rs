//! `skywave` / `skywave run`: the worker itself, until SIGTERM or SIGINT.

use std::process::ExitCode;

use skywave::config::{env_name, redact_url};

use super::discovery::{load, Discovery};

pub fn run(discovery: &Discovery, generate_secret: bool) -> ExitCode {
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
    let redis = match (&config.redis_url, &config.nats_url) {
        (Some(url), _) => format!("{} (joining in the background)", redact_url(url.expose())),
        (None, Some(_)) => "none (the broker is NATS)".to_string(),
        (None, None) => "none (single-instance mode)".to_string(),
    };
    let nats = config.nats_url.as_ref().map(|url| {
        format!(
            "{} (joining in the background)",
            skywave::config::redact_nats_url(url.expose())
        )
    });
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
            nats = nats.as_deref(),
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
