//! `parley`: parse the configuration, set up logging, bind, run.

use clap::Parser;
use parley::config::{Cli, Command, Config, LogFormat};
use parley::{Listeners, run};

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let command = cli.command.take();
    if let Some(Command::Stats {
        admin,
        interval,
        count,
    }) = &command
    {
        // A viewer: it needs none of the server's configuration.
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(parley::stats::run(
            admin,
            std::time::Duration::from_secs((*interval).max(1)),
            *count,
        ));
    }
    let config = match Config::resolve(cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("parley: {err}");
            std::process::exit(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(Command::Provision { count, first, out }) = &command {
        let (count, first) = (*count, *first);
        let written = runtime.block_on(parley::provision::provision(&config, count, first, out))?;
        println!("provisioned {written} accounts into {}", out.display());
        return Ok(());
    }
    runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        run(config, listeners, shutdown_signal()).await
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and collectors
    // get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
