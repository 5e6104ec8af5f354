//! Fan-out over processes.
//!
//! A process may hold at most 20,000 open files here, so the coordinator
//! (the `parley-bench <scenario>` the user runs) re-executes itself as
//! `parley-bench worker` children, each holding at most
//! [`MAX_SESSIONS_PER_WORKER`] sessions. They talk in JSON lines:
//!
//! - coordinator to worker, on stdin: the [`Spec`], then [`ToWorker`] lines
//!   (`Go` with a common start time, `Stop`); end of stdin means stop.
//! - worker to coordinator, on stdout: [`ToCoordinator::Ready`] once its
//!   sessions are up, then [`ToCoordinator::Done`] with its [`Report`]
//!   (histograms as base64 of hdrhistogram's V2 encoding).
//!
//! Workers log to stderr, which they share with the coordinator.

use std::io::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use crate::stats::{Counters, Report};

/// Sessions per worker: 19,000 sockets plus the worker's own few files stay
/// under the 20,000 open-file limit.
pub const MAX_SESSIONS_PER_WORKER: usize = 19_000;

/// Everything a worker needs, sent as its first stdin line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Which worker this is: picks its source address block.
    pub index: usize,
    /// The `wss://` URL of the target.
    pub ws: String,
    /// The certificate to trust.
    pub ca: PathBuf,
    /// `parley provision` output; `None` for made-up users (echo server).
    pub tokens: Option<PathBuf>,
    /// Which lines of `tokens` this worker uses.
    pub users: Range<usize>,
    /// Connects in flight at once while sessions are being opened.
    pub connect_concurrency: usize,
    pub job: Job,
}

/// What a worker does with its users.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Log every user in and hold the sessions, pinging, until `Stop`.
    Idle { ping_secs: u64, max_hold_secs: u64 },
    /// `concurrency` loops of connect, login, close for `secs`.
    Login {
        concurrency: usize,
        secs: f64,
        max_logins: u64,
    },
    /// Users in pairs (sender, recipient); senders send `rate` msgs/s in
    /// total for `secs`, then wait up to `drain_secs` for acks and receipts.
    /// With `echo`, every user sends to the echo server instead.
    Chat {
        rate: f64,
        secs: f64,
        body_len: usize,
        window: usize,
        drain_secs: f64,
        /// Devices per user (the users' lines come in groups of this many).
        #[serde(default = "one")]
        devices: usize,
        echo: bool,
        /// Every second pair's partner is offline (its sessions close
        /// before the go): those messages stay queued, and wake the partner.
        #[serde(default)]
        offline_partners: bool,
    },
    /// The first `senders` users queue `messages` for the other (offline)
    /// users; after `Go` those connect and drain their mailboxes.
    Offline {
        senders: usize,
        messages: u64,
        body_len: usize,
        window: usize,
        max_secs: f64,
    },
    /// Chat's pairs against an XMPP server (no users: anonymous logins):
    /// `users` is the range of sessions, in pairs.
    Xmpp(crate::jobs::XmppParams),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// Start the measured phase at this time (ns since the Unix epoch), so
    /// every worker's second 0 is the same.
    Go {
        start_unix_ns: u64,
    },
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToCoordinator {
    Ready { counters: Counters },
    Done { report: Box<Report> },
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Tells the coordinator what happened (one JSON line on stdout).
pub fn emit(msg: &ToCoordinator) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, msg)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// The worker's side of the conversation.
#[derive(Debug)]
pub struct Control {
    go: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
}

impl Control {
    /// Reads the spec from stdin, then follows stdin in a task.
    pub async fn start() -> anyhow::Result<(Spec, Self)> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = lines.next_line().await?.context("no spec on stdin")?;
        let spec: Spec = serde_json::from_str(&first).context("bad spec")?;
        let (go_tx, go) = watch::channel(None);
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(ToWorker::Go { start_unix_ns }) => {
                        let wait = start_unix_ns.saturating_sub(unix_ns());
                        let _ = go_tx.send(Some(Instant::now() + Duration::from_nanos(wait)));
                    }
                    Ok(ToWorker::Stop) => break,
                    Err(e) => eprintln!("worker: ignoring bad control line: {e}"),
                }
            }
            // Stop, or the coordinator is gone: either way, wind down.
            let _ = stop_tx.send(true);
        });
        Ok((spec, Self { go, stop }))
    }

    /// Waits for `Go`; `None` if stopped first.
    pub async fn wait_go(&mut self) -> Option<Instant> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            if let Some(at) = *self.go.borrow_and_update() {
                return Some(at);
            }
            tokio::select! {
                r = self.go.changed() => if r.is_err() { return None },
                r = self.stop.changed() => if r.is_err() { return None },
            }
        }
    }

    /// A receiver that turns true on `Stop` or end of stdin.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

/// Waits until `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The coordinator's handle on its workers.
#[derive(Debug)]
pub struct Fleet {
    workers: Vec<WorkerProc>,
    /// [`Fleet::cpu_secs`] when the last report came in.
    pub cpu_at_done: Option<f64>,
}

#[derive(Debug)]
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Fleet {
    /// Starts one `parley-bench worker` per spec and hands each its spec.
    pub async fn spawn(specs: &[Spec]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find our own executable")?;
        let mut workers = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                // A coordinator that fails must not leave workers behind.
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_vec(spec)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            workers.push(WorkerProc {
                child,
                stdin: Some(stdin),
                lines: BufReader::new(stdout).lines(),
            });
        }
        Ok(Self {
            workers,
            cpu_at_done: None,
        })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// The worker processes' CPU time so far (user and system), in seconds,
    /// with this coordinator's own: the generator's cost, to report beside
    /// the server's.
    pub fn cpu_secs(&self) -> f64 {
        let own = crate::procfs::cpu_secs(std::process::id()).unwrap_or(0.0);
        own + self
            .workers
            .iter()
            .filter_map(|w| w.child.id())
            .filter_map(|pid| crate::procfs::cpu_secs(pid).ok())
            .sum::<f64>()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Waits (at most `within`) for every worker's `Ready`; their counters
    /// added up.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<Counters> {
        let mut total = Counters::default();
        let deadline = Instant::now() + within;
        for w in &mut self.workers {
            match next_msg(w, deadline).await? {
                ToCoordinator::Ready { counters } => total.merge(&counters),
                ToCoordinator::Done { .. } => bail!("a worker finished before it was ready"),
            }
        }
        Ok(total)
    }

    /// Starts every worker's measured phase `lead` from now.
    pub async fn go(&mut self, lead: Duration) -> anyhow::Result<Instant> {
        let start_unix_ns = unix_ns() + u64::try_from(lead.as_nanos()).unwrap_or(0);
        self.send(&ToWorker::Go { start_unix_ns }).await?;
        Ok(Instant::now() + lead)
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.send(&ToWorker::Stop).await?;
        for w in &mut self.workers {
            w.stdin = None;
        }
        Ok(())
    }

    /// Waits (at most `within`) for every worker's report; all added up.
    pub async fn reports(&mut self, within: Duration) -> anyhow::Result<Report> {
        let mut total = Report::default();
        let deadline = Instant::now() + within;
        for w in &mut self.workers {
            match next_msg(w, deadline).await? {
                ToCoordinator::Done { report } => total.merge(&report),
                ToCoordinator::Ready { .. } => bail!("a worker said ready twice"),
            }
        }
        // Before they are reaped: a finished worker is a zombie until then,
        // and its CPU times are still in /proc.
        self.cpu_at_done = Some(self.cpu_secs());
        for w in &mut self.workers {
            w.stdin = None;
            let _ = timeout(Duration::from_secs(10), w.child.wait()).await;
        }
        Ok(total)
    }

    async fn send(&mut self, msg: &ToWorker) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        for w in &mut self.workers {
            if let Some(stdin) = &mut w.stdin {
                stdin.write_all(&line).await.context("a worker is gone")?;
                stdin.flush().await?;
            }
        }
        Ok(())
    }
}

async fn next_msg(w: &mut WorkerProc, deadline: Instant) -> anyhow::Result<ToCoordinator> {
    let line = tokio::time::timeout_at(deadline, w.lines.next_line())
        .await
        .context("a worker did not answer in time")??
        .context("a worker exited early (see its errors above)")?;
    serde_json::from_str(&line).with_context(|| format!("bad line from a worker: {line:.200}"))
}

/// Splits `n` sessions over as few workers as fit, at least `min_workers`.
pub fn split(n: usize, min_workers: usize) -> Vec<Range<usize>> {
    let workers = n
        .div_ceil(MAX_SESSIONS_PER_WORKER)
        .max(min_workers)
        .max(1)
        .min(n.max(1));
    let mut ranges = Vec::with_capacity(workers);
    let mut start = 0;
    for i in 0..workers {
        let len = crate::pacing::share(n as u64, workers, i) as usize;
        ranges.push(start..start + len);
        start += len;
    }
    ranges
}

/// The serde default of `Job::Chat::devices` (a spec from before it).
fn one() -> usize {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_within_the_file_limit() {
        assert_eq!(split(1000, 1), vec![0..1000]);
        assert_eq!(split(19_000, 1), vec![0..19_000]);
        let r = split(50_000, 1);
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| r.len() <= MAX_SESSIONS_PER_WORKER));
        assert_eq!(r.last().map(|r| r.end), Some(50_000));
        assert_eq!(split(10, 4).len(), 4);
    }

    #[test]
    fn control_messages_round_trip() {
        let msg = ToCoordinator::Done {
            report: Box::default(),
        };
        let json = serde_json::to_string(&msg).expect("serializes");
        assert!(matches!(
            serde_json::from_str(&json).expect("parses"),
            ToCoordinator::Done { .. }
        ));
        let go = serde_json::to_string(&ToWorker::Go { start_unix_ns: 5 }).expect("go");
        assert_eq!(go, r#"{"go":{"start_unix_ns":5}}"#);
    }
}
