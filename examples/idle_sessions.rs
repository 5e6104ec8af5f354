//! Holds many idle, authenticated sessions open against a running `parley`,
//! to measure what an idle session costs the server.
//!
//! ```text
//! parley --data-dir /tmp/p &                       # a server with the dev SMS outbox
//! cargo run --release --example idle_sessions -- --data-dir /tmp/p --sessions 1000 --settle 5 --hold 30
//! grep VmRSS /proc/$(pgrep -x parley)/status       # while the sessions are held
//! ```
//!
//! It registers `--sessions` phone numbers through the real HTTPS API,
//! reading each PIN from `<data-dir>/outbox.jsonl` as a person reads an SMS,
//! then connects one session per phone, drains each backlog, and holds them
//! for `--hold` seconds (the sessions ping every 30 s, as phones do). The
//! proper load generator comes with `bench/`; this is the smallest tool that
//! answers "how much memory per idle session".

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parley_client::{Registration, Session, tls_config_from_file};
use parley_proto::v1::server_frame::Frame;

struct Args {
    data_dir: PathBuf,
    http: String,
    ws: String,
    sessions: usize,
    hold: Duration,
    /// Pause between registering and connecting, to sample the server's
    /// memory with the accounts created but no session open.
    settle: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        data_dir: PathBuf::from("parley-data"),
        http: "https://127.0.0.1:8443".into(),
        ws: "wss://127.0.0.1:5443/v1/ws".into(),
        sessions: 1000,
        hold: Duration::from_secs(30),
        settle: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data-dir" => args.data_dir = value.into(),
            "--http" => args.http = value,
            "--ws" => args.ws = value,
            "--sessions" => args.sessions = value.parse()?,
            "--hold" => args.hold = Duration::from_secs(value.parse()?),
            "--settle" => args.settle = Duration::from_secs(value.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

fn code_for(outbox: &str, phone: &str) -> Option<String> {
    outbox.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["to"] != phone {
            return None;
        }
        let digits: String = v["body"]
            .as_str()?
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        (digits.len() == 6).then_some(digits)
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let tls = tls_config_from_file(&args.data_dir.join("tls/cert.pem"))?;
    let registration = Registration::new(&args.http, tls.clone())?;
    let outbox_path = args.data_dir.join("outbox.jsonl");
    // A number range of its own per run, so reruns never hit the per-number
    // code limits.
    let base = u64::from(std::process::id()) % 1000 * 100_000;

    let started = Instant::now();
    let mut tokens = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions as u64 {
        let phone = format!("+1444{:08}", base + i);
        registration.request_code(&phone).await?;
        let outbox = std::fs::read_to_string(&outbox_path)?;
        let code = code_for(&outbox, &phone).context("no code in the outbox")?;
        tokens.push(registration.verify(&phone, &code).await?.token);
    }
    println!(
        "registered {} phones in {:.1?}",
        tokens.len(),
        started.elapsed()
    );
    tokio::time::sleep(args.settle).await;

    let started = Instant::now();
    let mut sessions = Vec::with_capacity(tokens.len());
    for token in &tokens {
        let mut session = Session::connect(&args.ws, tls.clone(), token).await?;
        loop {
            let frame = session.next_frame_timeout(Duration::from_secs(10)).await?;
            if matches!(frame.frame, Some(Frame::QueueEmpty(_))) {
                break;
            }
        }
        sessions.push(session);
    }
    println!(
        "connected {} sessions in {:.1?}",
        sessions.len(),
        started.elapsed()
    );
    println!(
        "holding {} idle sessions for {:?}",
        sessions.len(),
        args.hold
    );

    // Hold them: each session's keepalive pings while it waits for frames.
    let holders: Vec<_> = sessions
        .into_iter()
        .map(|mut session| {
            let hold = args.hold;
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + hold;
                while tokio::time::Instant::now() < deadline {
                    let left = deadline - tokio::time::Instant::now();
                    match session.next_frame_timeout(left).await {
                        Ok(_) | Err(parley_client::ClientError::Timeout) => {}
                        Err(err) => return Err(err),
                    }
                }
                session.close().await
            })
        })
        .collect();
    let mut closed_early = 0;
    for holder in holders {
        if !matches!(holder.await, Ok(Ok(()))) {
            closed_early += 1;
        }
    }
    if closed_early > 0 {
        bail!("{closed_early} sessions ended before the hold was over");
    }
    println!("done");
    Ok(())
}
