//! What a worker process does: open its sessions and drive them.
//!
//! Every session is one task that owns its [`Conn`]; the tasks of a worker
//! share a [`Ctx`] (the connector, the source addresses, the recorder).
//! Workers run a single-threaded runtime: the machine has two cores and the
//! server needs them too, so more generator cores come from more worker
//! processes (`--workers`), not threads.

mod chat;
mod idle;
mod login;
mod offline;
mod xmpp;

pub use xmpp::{MIN_BODY as XMPP_MIN_BODY, Params as XmppParams};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use crate::addr::{SourcePool, Target};
use crate::conn::{Conn, ConnError, Connector};
use crate::stats::{Recorder, Report};
use crate::users::{self, User};
use crate::worker::{Control, Job, ToCoordinator};

/// A login must finish within this (connect, TLS, upgrade, QueueEmpty).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Only the first few failures are printed; the rest are counted.
const ERRORS_SHOWN: u64 = 5;
/// Files a worker needs besides its sessions (stdio, runtime, certificate).
const SPARE_FILES: u64 = 64;

/// What the session tasks of a worker share.
#[derive(Debug)]
pub struct Ctx {
    /// The Parley gateway's connector; `None` in an XMPP worker.
    pub connector: Option<Connector>,
    pub sources: SourcePool,
    /// Bounds connects in flight, so opening 19,000 sessions is a steady
    /// stream and not a burst past the server's accept backlog.
    pub connect_permits: Semaphore,
    pub rec: Mutex<Recorder>,
    /// Zero of the time stamps written into message bodies.
    pub epoch: Instant,
    /// Interval of keepalive pings.
    pub ping: Duration,
    /// Sessions that asked for their first ping time so far.
    pingers: AtomicU64,
    errors_seen: AtomicU64,
}

impl Ctx {
    pub fn rec(&self) -> MutexGuard<'_, Recorder> {
        // A panicking session task must not take the whole report with it.
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nanoseconds from the epoch to `at`: the stamp in a message body.
    pub fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant a stamp stands for.
    pub fn unstamp(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// When a session's first keepalive ping is due: spread over one
    /// interval (the n-th session at the fractional part of n × the golden
    /// ratio), so that the sessions of a run do not all ping in the same
    /// millisecond, which would set the tail latency of every long run.
    pub fn first_ping(&self) -> Instant {
        let n = self.pingers.fetch_add(1, Ordering::Relaxed);
        Instant::now() + self.ping.mul_f64(spread(n))
    }

    /// Prints the first few errors; counting them is the caller's job.
    pub fn report_error(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.errors_seen.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
            eprintln!("worker: {what}: {e}");
        }
    }

    /// The Parley connector (every job but XMPP has one).
    pub fn connector(&self) -> Result<&Connector, ConnError> {
        self.connector
            .as_ref()
            .ok_or_else(|| ConnError::Protocol("this worker has no Parley target".into()))
    }

    fn take_report(&self) -> Report {
        std::mem::take(&mut self.rec().report)
    }

    /// Connect and log in as `user` from source address number `i`,
    /// recording the login or the failure.
    pub async fn open(&self, i: usize, user: &User) -> Option<Conn> {
        let login = async {
            let mut conn = self
                .connector()?
                .connect(self.sources.nth(i), &user.token)
                .await?;
            let stale = conn.login().await?;
            Ok::<_, ConnError>((conn, stale))
        };
        self.logged_in("login failed", login, ConnError::Timeout)
            .await
    }

    /// Runs `login` (a session and the stale entries it acked) under a
    /// connect permit and [`LOGIN_TIMEOUT`] (then `timed_out`), recording
    /// the login or the failure: what every job's connects share.
    pub async fn logged_in<T, E: std::fmt::Display>(
        &self,
        what: &str,
        login: impl std::future::Future<Output = Result<(T, u64), E>>,
        timed_out: E,
    ) -> Option<T> {
        let _permit = self.connect_permits.acquire().await.ok()?;
        let t0 = Instant::now();
        match timeout(LOGIN_TIMEOUT, login)
            .await
            .unwrap_or(Err(timed_out))
        {
            Ok((session, stale)) => {
                let mut rec = self.rec();
                rec.report.counters.connected += 1;
                rec.report.counters.stale += stale;
                rec.report.hists.login.record(t0.elapsed());
                Some(session)
            }
            Err(e) => {
                self.rec().report.counters.connect_failed += 1;
                self.report_error(what, &e);
                None
            }
        }
    }

    /// Opens sessions for `users` (source address `first + i`), at most
    /// `connect_permits` at a time; `None` where it failed.
    pub async fn open_all(self: &Arc<Self>, users: &[User], first: usize) -> Vec<Option<Conn>> {
        let mut set = JoinSet::new();
        for (i, user) in users.iter().enumerate() {
            let ctx = Arc::clone(self);
            let user = user.clone();
            set.spawn(async move { (i, ctx.open(first + i, &user).await) });
        }
        let mut conns: Vec<Option<Conn>> = (0..users.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, conn)) = joined {
                conns[i] = conn;
            }
        }
        conns
    }
}

/// The `parley-bench worker` entry point: spec from stdin, report to stdout.
pub async fn run_worker() -> anyhow::Result<()> {
    let (spec, ctl) = Control::start().await?;
    let sessions = match &spec.job {
        Job::Login { concurrency, .. } => *concurrency,
        _ => spec.users.len(),
    };
    ensure_files(sessions as u64 + SPARE_FILES)?;
    let connector = match &spec.job {
        Job::Xmpp(_) => None,
        _ => {
            let tls = parley_client::tls_config_from_file(&spec.ca)?;
            Some(Connector::new(Target::parse(&spec.ws)?, tls))
        }
    };
    let users = match &spec.tokens {
        _ if matches!(spec.job, Job::Xmpp(_)) => Vec::new(),
        Some(path) => users::load(path, spec.users.clone())?,
        None => users::synthetic(spec.users.clone()),
    };
    let series_secs = match &spec.job {
        Job::Idle { .. } => 1,
        Job::Login { secs, .. } => secs.ceil() as usize + 2,
        Job::Chat {
            secs, drain_secs, ..
        } => (secs + drain_secs).ceil() as usize + 2,
        Job::Offline { max_secs, .. } => max_secs.ceil() as usize + 2,
        Job::Xmpp(p) => (p.secs + p.drain_secs).ceil() as usize + 2,
    };
    let ping_secs = match &spec.job {
        Job::Idle { ping_secs, .. } => *ping_secs,
        _ => 60,
    };
    let ctx = Arc::new(Ctx {
        connector,
        sources: SourcePool::for_worker(spec.index),
        connect_permits: Semaphore::new(spec.connect_concurrency.max(1)),
        rec: Mutex::new(Recorder::new(series_secs)),
        epoch: Instant::now(),
        ping: Duration::from_secs(ping_secs.max(1)),
        pingers: AtomicU64::new(0),
        errors_seen: AtomicU64::new(0),
    });
    let report = match spec.job.clone() {
        Job::Idle { max_hold_secs, .. } => {
            idle::run(&ctx, &users, ctl, Duration::from_secs(max_hold_secs)).await?
        }
        Job::Login {
            concurrency,
            secs,
            max_logins,
        } => login::run(&ctx, &users, ctl, concurrency, secs, max_logins).await?,
        Job::Chat {
            rate,
            secs,
            body_len,
            window,
            drain_secs,
            devices,
            echo,
            offline_partners,
        } => {
            let params = chat::Params {
                offline_partners,
                rate,
                secs,
                body_len,
                window,
                drain_secs,
                devices,
            };
            if echo {
                chat::run_echo(&ctx, &users, ctl, params).await?
            } else {
                chat::run(&ctx, &users, ctl, params).await?
            }
        }
        Job::Offline {
            senders,
            messages,
            body_len,
            window,
            max_secs,
        } => {
            let params = offline::Params {
                senders,
                messages,
                body_len,
                window,
                max_secs,
            };
            offline::run(&ctx, &users, ctl, params).await?
        }
        Job::Xmpp(params) => xmpp::run(&ctx, spec.users.len(), ctl, params).await?,
    };
    crate::worker::emit(&ToCoordinator::Done {
        report: Box::new(report),
    })
}

/// Raises the open-file soft limit to the hard one and checks `needed`
/// fits: a worker that would hit the limit half-way fails at start instead.
fn ensure_files(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    }
    anyhow::ensure!(
        needed <= hard,
        "a worker needs {needed} open files, the limit is {hard}: use more workers"
    );
    Ok(())
}

/// The fractional part of `n` × the golden ratio: evenly spread over
/// [0, 1) for any number of consecutive `n`.
fn spread(n: u64) -> f64 {
    const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
    (n as f64 * PHI_FRACTION).fract()
}

/// Waits for `halt` to turn true.
pub async fn halted(halt: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = halt.wait_for(|h| *h).await;
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn first_pings_spread_over_the_whole_interval() {
        // 10,000 sessions in 10 buckets of the interval: none empty, none
        // holding more than 11 % of them.
        let mut buckets = [0u32; 10];
        for n in 0..10_000 {
            let f = spread(n);
            assert!((0.0..1.0).contains(&f));
            buckets[(f * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (900..=1100).contains(&b)),
            "{buckets:?}"
        );
    }
}
