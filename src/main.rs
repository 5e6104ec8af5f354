//! `parley`: parse the configuration, set up logging, claim the data
//! directory, bind, run.
//!
//! Every error that ends the process is one line (or one list, for the
//! configuration) on stderr, never a backtrace, whatever `RUST_BACKTRACE`
//! says: an operator's mistake gets a message that says what to do. Exit
//! status 2 is a bad configuration, 1 anything else.

use std::process::ExitCode;

use parley::config::{Cli, Command, Config, LogFormat};
use parley::datadir::{self, DataDir};
use parley::{Listeners, run};

fn main() -> ExitCode {
    // Before anything creates a file: the data directory holds message
    // bodies, phone numbers, codes and keys.
    datadir::restrict_umask();
    let mut cli = Cli::parse_args();
    let command = cli.command.take();
    if let Some(Command::Stats {
        admin,
        interval,
        count,
    }) = &command
    {
        // A viewer: it needs none of the server's configuration.
        return finish(runtime().and_then(|runtime| {
            runtime.block_on(parley::stats::run(
                admin,
                std::time::Duration::from_secs((*interval).max(1)),
                *count,
            ))
        }));
    }
    if let Some(Command::Backup { admin }) = &command {
        // Asks the running node; it needs none of the configuration either.
        return finish(
            runtime().and_then(|runtime| runtime.block_on(parley::backup::request(admin))),
        );
    }
    let config = match Config::resolve(cli, &|name| std::env::var_os(name)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("parley: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    if let Some(Command::Provision {
        count,
        first,
        devices,
        out,
    }) = &command
    {
        let (count, first, devices) = (*count, *first, *devices);
        return finish(runtime().and_then(|runtime| {
            let written = runtime.block_on(parley::provision::provision(
                &config, count, first, devices, out,
            ))?;
            println!("provisioned {written} accounts into {}", out.display());
            Ok(())
        }));
    }
    finish(runtime().and_then(|runtime| {
        runtime.block_on(async {
            // Claimed before the ports: a second server on the same data
            // directory is told whose it is, not that a port is taken.
            let data_dir = DataDir::open(&config.data_dir)?;
            let listeners = Listeners::bind(&config)?;
            run(config, data_dir, listeners, shutdown_signal()).await
        })
    }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

/// The exit status of a finished command; an error is printed as its chain
/// of causes on one line (`{:#}`), never with a backtrace.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("parley: {err:#}");
            ExitCode::FAILURE
        }
    }
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
