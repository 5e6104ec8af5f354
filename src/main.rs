//! `parley`: parse the configuration, set up logging, bind, run.

use clap::Parser;
use parley::config::{Cli, Config, LogFormat};
use parley::{Listeners, run};

fn main() -> anyhow::Result<()> {
    let config = match Config::resolve(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("parley: {err}");
            std::process::exit(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        run(config, listeners, shutdown_signal()).await
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
