//! `parley-bench`: parse the command line, pick a runtime, run a scenario.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use parley_bench::scenario::{
    self, ChatArgs, FloorArgs, IdleArgs, LoginArgs, MediaArgs, OfflineArgs, PhonesArgs, XmppArgs,
};

/// Parley's load generator. Every scenario is bounded in time and count,
/// talks to loopback only, and writes a result JSON, a summary and an SVG.
#[derive(Debug, Parser)]
#[command(name = "parley-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hold N authenticated sessions; server memory per session.
    Idle(IdleArgs),
    /// Full logins per second with K at once; login latency.
    Login(LoginArgs),
    /// Pairs sending at a set rate: msgs/s, loss, duplicates (--find-max ramps).
    Chat(ChatArgs),
    /// Chat at a given rate (half the chat maximum): send-to-receipt latency.
    Latency(ChatArgs),
    /// The real workload: many sessions, few messages each (5,000 pairs,
    /// 64-byte bodies, 3,000 msgs/s): server and generator CPU per message,
    /// deliver and receipt latency, stalls.
    Phones(PhonesArgs),
    /// `phones` against an XMPP server (ejabberd, bench/ejabberd.sh) over
    /// plain TCP with anonymous logins, for a side-by-side comparison.
    Xmpp(XmppArgs),
    /// Queue messages for offline users: memory per message, drain rate.
    Offline(OfflineArgs),
    /// The same loads against the built-in echo server: the machine's floor.
    Floor(FloorArgs),
    /// One large file up (tus) and down over TLS: MB/s, the server's peak
    /// memory and CPU per MiB, beside a bare copy of the file.
    Media(MediaArgs),
    /// Run the bare TLS + WebSocket echo server.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
        /// PEM certificate; with --key. Generated into --tls-dir if absent.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value = "bench-results/floor-tls")]
        tls_dir: PathBuf,
        /// Stop when stdin closes (how `parley-bench floor` stops its child).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Internal: one worker process of a scenario (spec on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        // Workers are single-threaded: more generator cores come from more
        // worker processes (see `jobs`).
        Command::Worker => current_thread()?.block_on(parley_bench::jobs::run_worker()),
        // The echo server gets every core, as Parley's server does.
        Command::EchoServer {
            addr,
            cert,
            key,
            tls_dir,
            exit_on_stdin_eof,
        } => tokio::runtime::Runtime::new()?.block_on(echo_server(
            addr,
            cert,
            key,
            tls_dir,
            exit_on_stdin_eof,
        )),
        Command::Idle(a) => current_thread()?.block_on(scenario::idle(a)).map(drop),
        Command::Login(a) => current_thread()?.block_on(scenario::login(a)).map(drop),
        Command::Chat(a) => current_thread()?
            .block_on(scenario::chat(a, "chat"))
            .map(drop),
        Command::Latency(a) => current_thread()?
            .block_on(scenario::chat(a, "latency"))
            .map(drop),
        Command::Phones(a) => current_thread()?.block_on(scenario::phones(a)).map(drop),
        Command::Xmpp(a) => current_thread()?.block_on(scenario::xmpp(a)).map(drop),
        Command::Offline(a) => current_thread()?.block_on(scenario::offline(a)).map(drop),
        Command::Floor(a) => current_thread()?.block_on(scenario::floor(a)).map(drop),
        Command::Media(a) => current_thread()?.block_on(scenario::media(a)).map(drop),
    }
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Serves until SIGINT, or stdin closes if asked to.
async fn echo_server(
    addr: std::net::SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    tls_dir: PathBuf,
    exit_on_stdin_eof: bool,
) -> anyhow::Result<()> {
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        _ => parley_bench::echo::ensure_cert(&tls_dir)?,
    };
    let listener = parley_bench::echo::bind(addr)?;
    println!("echo ready addr={}", listener.local_addr()?);
    let shutdown = async {
        let stdin_closed = async {
            if !exit_on_stdin_eof {
                return std::future::pending().await;
            }
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf)
                .await
                .unwrap_or(0)
                > 0
            {}
        };
        tokio::select! {
            () = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    parley_bench::echo::run(listener, &cert, &key, shutdown).await
}
