//! `parley-cli`: a command-line phone for Parley.
//!
//! Parses flags, sets up tracing, and runs one command of
//! [`parley_client::cli`]. Output lines on stdout are stable and meant to be
//! grepped (the README tour and the end-to-end tests read them); an error is
//! one short line on stderr, with exit code 1 (usage errors: clap's message,
//! exit code 2).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use parley_client::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::from_env();
    // Warnings are for the person at the terminal: no timestamps, no
    // module paths.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // One command at a time: one thread is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    let result = runtime.block_on(cli::run(cli));
    // Everything worth keeping is written and synced by now; a DNS lookup
    // still running on a blocking thread must not hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::FAILURE
}
