//! What the coordinator does for each scenario: provision or load users,
//! start the workers, read the server's memory, add up the reports, and
//! turn them into figures beside the goals.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::time::{Instant, sleep};

use crate::pacing::share;
use crate::procfs::rss_bytes;
use crate::report::{Figure, Op, RunResult};
use crate::stats::{Latency, Report};
use crate::users;
use crate::worker::{Fleet, Job, MAX_SESSIONS_PER_WORKER, Spec, split};

mod media;
pub use media::{MediaArgs, media};

/// Longest measured phase any scenario accepts, in seconds.
const MAX_SECS: f64 = 3600.0;
/// Most sessions a run opens (fanned out over workers).
const MAX_SESSIONS: usize = 200_000;
/// Pause between the last worker's Ready and second 0, so every worker has
/// the Go line before its start time.
const GO_LEAD: Duration = Duration::from_millis(300);

/// Options every scenario shares.
#[derive(Args, Clone, Debug, Serialize)]
pub struct Common {
    /// The server's data directory: users are provisioned into it with
    /// `parley provision` (reused while enough exist) and its
    /// `tls/cert.pem` is trusted.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A `parley provision` output file to use instead of provisioning.
    #[arg(long, requires = "ca")]
    pub tokens: Option<PathBuf>,
    /// The certificate to trust (with --tokens).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The gateway; loopback only.
    #[arg(long, default_value = parley_client::DEFAULT_WS)]
    pub ws: String,
    /// The server's process id, to read its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Where the result JSON, summary and SVG go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// The `parley` binary used to provision (default: next to this one).
    #[arg(long)]
    pub parley_bin: Option<PathBuf>,
    /// Provision users again even if enough exist (revokes the old tokens).
    #[arg(long)]
    pub fresh_users: bool,
    /// Worker processes at least (more when sessions need them).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Connects in flight per worker while opening sessions.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// A floor result file: its figures are shown beside this run's.
    #[arg(long)]
    pub floor: Option<PathBuf>,
}

/// Where credentials come from, once resolved.
struct Creds {
    tokens: Option<PathBuf>,
    ca: PathBuf,
}

impl Common {
    /// Every problem with the options, not just the first.
    fn problems(&self) -> Vec<String> {
        let mut p = self.problems_of_target();
        if let Err(e) = crate::addr::Target::parse(&self.ws) {
            p.push(format!("--ws: {e:#}"));
        }
        if self.tokens.is_none() && self.data_dir.is_none() {
            p.push("give --data-dir DIR, or --tokens FILE --ca CERT".into());
        }
        p
    }

    /// The problems of the options every target shares (workers, connects).
    fn problems_of_target(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=64).contains(&self.workers) {
            p.push("--workers must be 1..=64".into());
        }
        if !(1..=10_000).contains(&self.connect_concurrency) {
            p.push("--connect-concurrency must be 1..=10000".into());
        }
        p
    }

    fn creds(&self, users: usize) -> anyhow::Result<Creds> {
        self.creds_of(users, 1)
    }

    /// Credentials for `users` sessions, accounts of `devices` devices.
    fn creds_of(&self, users: usize, devices: usize) -> anyhow::Result<Creds> {
        if let Some(tokens) = &self.tokens {
            let have = users::count(tokens);
            if have < users {
                bail!(
                    "{} has {have} users, the run needs {users}",
                    tokens.display()
                );
            }
            let ca = self.ca.clone().context("--tokens needs --ca")?;
            return Ok(Creds {
                tokens: Some(tokens.clone()),
                ca,
            });
        }
        let dir = self.data_dir.as_ref().context("no --data-dir")?;
        let parley = self
            .parley_bin
            .clone()
            .unwrap_or_else(users::default_parley_bin);
        let tokens = users::ensure_provisioned(&parley, dir, users, devices, self.fresh_users)?;
        Ok(Creds {
            tokens: Some(tokens),
            ca: self.ca.clone().unwrap_or_else(|| dir.join("tls/cert.pem")),
        })
    }

    /// The server's CPU time so far (user and system), in seconds.
    fn cpu_secs(&self) -> Option<f64> {
        let pid = self.server_pid?;
        match crate::procfs::cpu_secs(pid) {
            Ok(secs) => Some(secs),
            Err(e) => {
                eprintln!("cannot read the server's CPU time: {e:#}");
                None
            }
        }
    }

    fn rss(&self) -> Option<u64> {
        let pid = self.server_pid?;
        match rss_bytes(pid) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("cannot read the server's memory: {e:#}");
                None
            }
        }
    }

    fn specs(
        &self,
        creds: &Creds,
        ranges: Vec<std::ops::Range<usize>>,
        job: impl Fn(usize) -> Job,
    ) -> Vec<Spec> {
        ranges
            .into_iter()
            .enumerate()
            .map(|(index, users)| Spec {
                index,
                ws: self.ws.clone(),
                ca: creds.ca.clone(),
                tokens: creds.tokens.clone(),
                users,
                connect_concurrency: self.connect_concurrency,
                job: job(index),
            })
            .collect()
    }

    /// Adds the floor's figures, writes the files, prints the summary.
    fn finish(&self, mut result: RunResult) -> anyhow::Result<RunResult> {
        if let Some(path) = &self.floor {
            let floor: RunResult = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a result file", path.display()))?;
            result.beside_floor(&floor);
        }
        let json = result.write(&self.out)?;
        print!("{}", result.summary());
        println!("result: {}", json.display());
        Ok(result)
    }
}

fn check(common: &Common, mut problems: Vec<String>) -> anyhow::Result<()> {
    problems.extend(common.problems());
    refuse(problems)
}

/// Fails with every problem, if there is one.
fn refuse(problems: Vec<String>) -> anyhow::Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("bad options:\n  {}", problems.join("\n  "))
    }
}

fn check_secs(p: &mut Vec<String>, name: &str, v: f64) {
    if !(v > 0.0 && v <= MAX_SECS) {
        p.push(format!("{name} must be in (0, {MAX_SECS}] seconds"));
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Login latency figures (p50, p99 with the goal, p99.9).
fn login_figures(h: &Latency) -> Vec<Figure> {
    let s = h.summary();
    vec![
        Figure::new("login_p50_ms", ms(s.p50_us), "ms"),
        Figure::new("login_p99_ms", ms(s.p99_us), "ms").goal(Op::AtMost, 100.0),
        Figure::new("login_p999_ms", ms(s.p999_us), "ms"),
    ]
}

// ---------------------------------------------------------------------------
// idle

#[derive(Args, Clone, Debug, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Sessions to hold.
    #[arg(long, default_value_t = 19_000)]
    pub sessions: usize,
    /// Seconds to hold them once all are connected (memory is sampled
    /// every second; the last sample counts).
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds between a session's pings.
    #[arg(long, default_value_t = 60)]
    pub ping: u64,
}

pub async fn idle(a: IdleArgs) -> anyhow::Result<RunResult> {
    let mut p = Vec::new();
    check_secs(&mut p, "--hold", a.hold);
    if !(1..=MAX_SESSIONS).contains(&a.sessions) {
        p.push(format!("--sessions must be 1..={MAX_SESSIONS}"));
    }
    if !(1..=80).contains(&a.ping) {
        p.push("--ping must be 1..=80 s (the server closes sessions silent for 90 s)".into());
    }
    check(&a.common, p)?;
    let c = &a.common;
    let creds = c.creds(a.sessions)?;
    let (report, extra, figures) = hold_sessions(c, &creds, a.sessions, a.hold, a.ping).await?;
    let mut result = RunResult::new("idle", &c.ws, serde_json::to_value(&a)?).with_report(&report);
    result.figures = figures;
    result.extra = extra;
    c.finish(result)
}

/// Opens `sessions`, holds them `hold` seconds sampling the server's RSS.
async fn hold_sessions(
    c: &Common,
    creds: &Creds,
    sessions: usize,
    hold: f64,
    ping: u64,
) -> anyhow::Result<(Report, serde_json::Value, Vec<Figure>)> {
    let before = c.rss();
    let specs = c.specs(creds, split(sessions, c.workers), |_| Job::Idle {
        ping_secs: ping,
        max_hold_secs: hold.ceil() as u64 + 120,
    });
    let mut fleet = Fleet::spawn(&specs).await?;
    let t0 = Instant::now();
    let ready = fleet
        .ready(Duration::from_secs(120 + sessions as u64 / 50))
        .await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} sessions up ({} failed) in {connect_secs:.1} s; holding {hold} s",
        ready.connected, ready.connect_failed
    );
    fleet.go(Duration::ZERO).await?;
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(hold);
    while Instant::now() < end {
        sleep(Duration::from_secs(1).min(end - Instant::now())).await;
        if let Some(b) = c.rss() {
            samples.push(b);
        }
    }
    fleet.stop().await?;
    let report = fleet.reports(Duration::from_secs(120)).await?;
    let held = samples.last().copied();
    let mut figures = vec![Figure::new("sessions", ready.connected as f64, "")];
    if let (Some(before), Some(held)) = (before, held) {
        let per = held.saturating_sub(before) as f64 / ready.connected.max(1) as f64;
        figures.push(Figure::new("bytes_per_session", per, "B").goal(Op::AtMost, 6144.0));
        figures.push(Figure::new(
            "rss_before_mib",
            before as f64 / 1048576.0,
            "MiB",
        ));
        figures.push(Figure::new("rss_held_mib", held as f64 / 1048576.0, "MiB"));
    }
    figures.push(Figure::new(
        "connect_per_s",
        ready.connected as f64 / connect_secs.max(1e-3),
        "1/s",
    ));
    let extra = serde_json::json!({
        "rss_before_bytes": before,
        "rss_held_bytes": held,
        "rss_samples_bytes": samples,
        "connect_secs": connect_secs,
    });
    Ok((report, extra, figures))
}

// ---------------------------------------------------------------------------
// login

#[derive(Args, Clone, Debug, Serialize)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: Common,
    /// Login loops running at once (over all workers).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds of logging in.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Users cycled through (at least --concurrency).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Stop after this many logins even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_logins: u64,
}

pub async fn login(a: LoginArgs) -> anyhow::Result<RunResult> {
    let mut p = Vec::new();
    check_secs(&mut p, "--duration", a.duration);
    if !(1..=10_000).contains(&a.concurrency) {
        p.push("--concurrency must be 1..=10000".into());
    }
    if a.users < a.concurrency || a.users > MAX_SESSIONS {
        p.push(format!("--users must be --concurrency..={MAX_SESSIONS}"));
    }
    check(&a.common, p)?;
    let c = &a.common;
    let creds = c.creds(a.users)?;
    let report = login_run(c, &creds, a.users, a.concurrency, a.duration, a.max_logins).await?;
    let mut result = RunResult::new("login", &c.ws, serde_json::to_value(&a)?).with_report(&report);
    result.figures = login_result_figures(&report, a.duration);
    c.finish(result)
}

async fn login_run(
    c: &Common,
    creds: &Creds,
    users: usize,
    concurrency: usize,
    secs: f64,
    max_logins: u64,
) -> anyhow::Result<Report> {
    let workers = c.workers.min(concurrency);
    let ranges = split(users, workers);
    let n = ranges.len();
    let specs = c.specs(creds, ranges, |i| Job::Login {
        concurrency: share(concurrency as u64, n, i) as usize,
        secs,
        max_logins: share(max_logins, n, i),
    });
    let mut fleet = Fleet::spawn(&specs).await?;
    fleet.ready(Duration::from_secs(60)).await?;
    fleet.go(GO_LEAD).await?;
    fleet.reports(Duration::from_secs_f64(secs + 120.0)).await
}

fn login_result_figures(report: &Report, secs: f64) -> Vec<Figure> {
    let c = &report.counters;
    let mut f =
        vec![Figure::new("logins_per_s", c.logins as f64 / secs, "1/s").goal(Op::AtLeast, 3000.0)];
    f.extend(login_figures(&report.hists.login));
    f.push(Figure::new("login_failed", c.login_failed as f64, "").goal(Op::AtMost, 0.0));
    f
}

// ---------------------------------------------------------------------------
// chat and latency

#[derive(Args, Clone, Debug, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Online pairs of users; each sender sends to its partner.
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Devices per user, all online: the sender's first device sends, and
    /// each message goes to every device of the partner and, as a copy, to
    /// the sender's other devices (each acks on its own). Sessions: pairs ×
    /// 2 × devices.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Total messages per second over all senders (first step with --find-max).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds of sending (per step with --find-max).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Message body bytes (at least 16: sequence number and time stamp).
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Sends without a ServerAck per sender, at most (the server remembers 128).
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Seconds to wait after sending for the last acks and receipts.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Raise the rate step by step until the server falls behind.
    #[arg(long)]
    pub find_max: bool,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Most steps.
    #[arg(long, default_value_t = 8)]
    pub max_steps: usize,
    /// A step fails when its receipt p99 exceeds this many ms (latency
    /// growing without bound shows up here first).
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,
    /// Every second pair's partner is offline: its sessions close before
    /// the sending starts, so those messages stay queued (and wake the
    /// partner with a push, if it has a token). Their senders count a
    /// message done at its ack (`queued_offline`); msgs_per_s and the
    /// latency figures are the online pairs'.
    #[arg(long)]
    pub offline_partners: bool,
    /// Set by `xmpp`: the same run against an XMPP server.
    #[arg(skip)]
    pub xmpp: Option<XmppTarget>,
}

/// Where `xmpp` sends, and how.
#[derive(Clone, Debug, Serialize)]
pub struct XmppTarget {
    pub addr: std::net::SocketAddrV4,
    pub receipts: bool,
}

impl ChatArgs {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        check_secs(&mut p, "--duration", self.duration);
        check_secs(&mut p, "--drain", self.drain);
        if !(1..=5).contains(&self.devices) {
            p.push("--devices must be 1..=5".into());
        }
        if !(1..=MAX_SESSIONS / (2 * self.devices.max(1))).contains(&self.pairs) {
            p.push(format!(
                "--pairs must be 1..={} (sessions: pairs × 2 × devices)",
                MAX_SESSIONS / (2 * self.devices.max(1))
            ));
        }
        if !(self.rate > 0.0 && self.rate <= 10_000_000.0) {
            p.push("--rate must be in (0, 10,000,000]".into());
        }
        if !(16..=parley_proto::limits::MAX_BODY_BYTES).contains(&self.body) {
            p.push("--body must be 16..=64512".into());
        }
        if !(1..=128).contains(&self.window) {
            p.push("--window must be 1..=128".into());
        }
        if self.find_max && !(self.step_factor > 1.0 && (1..=20).contains(&self.max_steps)) {
            p.push("--find-max needs --step-factor > 1 and --max-steps 1..=20".into());
        }
        p
    }
}

pub async fn chat(a: ChatArgs, scenario: &str) -> anyhow::Result<RunResult> {
    let c = &a.common;
    let creds = if a.xmpp.is_some() {
        // Anonymous logins: no users, no certificate.
        let mut p = a.problems();
        p.extend(c.problems_of_target());
        refuse(p)?;
        Creds {
            tokens: None,
            ca: PathBuf::new(),
        }
    } else {
        check(c, a.problems())?;
        c.creds_of(a.pairs * 2 * a.devices, a.devices)?
    };
    if !a.find_max {
        let report = chat_run(c, &creds, &a, a.rate).await?;
        let mut result = RunResult::new(scenario, &target_of(&a), serde_json::to_value(&a)?)
            .with_report(&report);
        result.figures = chat_figures(&report, &a, a.rate, Goals::of(scenario));
        return c.finish(result);
    }
    let mut steps = Vec::new();
    // The fastest step that kept up: (its rate, what it achieved, report).
    let mut best: Option<(f64, f64, Report)> = None;
    let mut rate = a.rate;
    for step in 0..a.max_steps {
        let report = chat_run(c, &creds, &a, rate).await?;
        let achieved = sustained(&report, a.duration);
        let p99 = ms(report.hists.receipt.summary().p99_us);
        let k = &report.counters;
        let lost = k.sent.saturating_sub(k.receipts + k.queued_offline);
        let passed = lost == 0
            && k.unsent == 0
            && k.send_errors == 0
            && k.closed == 0
            && achieved >= 0.95 * rate
            && p99 <= a.max_p99_ms;
        eprintln!(
            "step {step}: offered {rate:.0}/s achieved {achieved:.0}/s p99 {p99:.2} ms lost {lost} -> {}",
            if passed { "kept up" } else { "fell behind" }
        );
        steps.push(serde_json::json!({
            "rate": rate, "achieved_msgs_per_s": achieved, "receipt_p99_ms": p99,
            "lost": lost, "passed": passed,
        }));
        if !passed {
            if best.is_none() {
                best = Some((rate, 0.0, report));
            }
            break;
        }
        best = Some((rate, achieved, report));
        rate *= a.step_factor;
    }
    let (best_rate, max, report) = best.context("no step ran")?;
    let mut result =
        RunResult::new(scenario, &target_of(&a), serde_json::to_value(&a)?).with_report(&report);
    let max_figure = Figure::new("max_msgs_per_s", max, "msg/s");
    result.figures = vec![if Goals::of(scenario) == Goals::Throughput {
        max_figure.goal(Op::AtLeast, 30_000.0)
    } else {
        max_figure
    }];
    result
        .figures
        .extend(chat_figures(&report, &a, best_rate, Goals::of(scenario)));
    result.extra =
        serde_json::json!({ "steps": steps, "series_of": "the fastest step that kept up" });
    c.finish(result)
}

/// What the run talks to, for the result's header.
fn target_of(a: &ChatArgs) -> String {
    match &a.xmpp {
        Some(x) => format!("xmpp://{}", x.addr),
        None => a.common.ws.clone(),
    }
}

/// One chat run at `rate`: connect the pairs, send, drain, report. With
/// `--server-pid`, the server's CPU time over the run (from the go to the
/// last report) is in `extra.server_cpu_secs`.
async fn chat_run(c: &Common, creds: &Creds, a: &ChatArgs, rate: f64) -> anyhow::Result<Report> {
    let per_pair = 2 * a.devices;
    let workers = c
        .workers
        .max((a.pairs * per_pair).div_ceil(MAX_SESSIONS_PER_WORKER))
        .min(a.pairs);
    // Pairs never straddle workers: a worker's users are whole pairs.
    let pair_ranges = split(a.pairs, workers);
    let ranges: Vec<_> = pair_ranges
        .iter()
        .map(|r| r.start * per_pair..r.end * per_pair)
        .collect();
    let specs = c.specs(creds, ranges, |i| {
        let rate = rate * pair_ranges[i].len() as f64 / a.pairs as f64;
        match &a.xmpp {
            Some(x) => Job::Xmpp(crate::jobs::XmppParams {
                addr: x.addr,
                rate,
                secs: a.duration,
                body_len: a.body,
                drain_secs: a.drain,
                receipts: x.receipts,
            }),
            None => Job::Chat {
                rate,
                secs: a.duration,
                body_len: a.body,
                window: a.window,
                drain_secs: a.drain,
                devices: a.devices,
                echo: false,
                offline_partners: a.offline_partners,
            },
        }
    });
    let mut fleet = Fleet::spawn(&specs).await?;
    fleet
        .ready(Duration::from_secs(120 + (a.pairs * a.devices) as u64 / 25))
        .await?;
    let cpu_before = c.cpu_secs();
    let generator_before = fleet.cpu_secs();
    fleet.go(GO_LEAD).await?;
    let mut report = fleet
        .reports(Duration::from_secs_f64(a.duration + a.drain + 120.0))
        .await?;
    report.generator_cpu_secs = fleet.cpu_at_done.map(|after| after - generator_before);
    if let (Some(before), Some(after)) = (cpu_before, c.cpu_secs()) {
        report.server_cpu_secs = Some(after - before);
    }
    Ok(report)
}

/// Receipts (or echoes) per second from second 0 to the last one (at
/// least the sending time): what the server sustained end to end. A server
/// that falls behind stretches the time and so lowers the rate.
fn sustained(report: &Report, secs: f64) -> f64 {
    let k = &report.counters;
    let end = k.last_done_us as f64 / 1e6;
    k.receipts.max(k.echoed) as f64 / end.max(secs)
}

/// Which goals a chat run's figures are held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goals {
    /// `chat`: throughput.
    Throughput,
    /// `latency`: send to receipt.
    Latency,
    /// `phones`: the real workload's cost per message, latency and stalls
    /// (issue 12's goals).
    Phones,
    /// `xmpp`: another server's figures, for comparison: no goals.
    Compare,
}

impl Goals {
    fn of(scenario: &str) -> Self {
        match scenario {
            "latency" => Self::Latency,
            "phones" => Self::Phones,
            "xmpp" => Self::Compare,
            _ => Self::Throughput,
        }
    }
}

fn chat_figures(report: &Report, a: &ChatArgs, rate: f64, goals: Goals) -> Vec<Figure> {
    let k = &report.counters;
    let lost = k.sent.saturating_sub(k.receipts + k.queued_offline) + k.unsent;
    let dups = k.duplicates + k.receipt_duplicates;
    let l = report.hists.receipt.summary();
    let msgs_per_s = Figure::new("msgs_per_s", sustained(report, a.duration), "msg/s");
    let mut f = vec![
        Figure::new("offered_msgs_per_s", rate, "msg/s"),
        if goals == Goals::Throughput {
            msgs_per_s.goal(Op::AtLeast, 30_000.0)
        } else {
            msgs_per_s
        },
        Figure::new("lost", lost as f64, "msg").goal(Op::AtMost, 0.0),
        Figure::new("duplicates", dups as f64, "msg").goal(Op::AtMost, 0.0),
        Figure::new("send_errors", k.send_errors as f64, "msg").goal(Op::AtMost, 0.0),
        // Every device copy delivered: the partner's devices and the
        // sender's others (with one device per user, one per message).
        Figure::new("copies_delivered", k.delivered as f64, "copy"),
    ];
    if a.offline_partners {
        f.push(Figure::new(
            "queued_offline",
            k.queued_offline as f64,
            "msg",
        ));
    }
    if let Some(cpu) = report.server_cpu_secs {
        f.push(Figure::new("server_cpu_secs", cpu, "s"));
        if k.receipts > 0 {
            let per_msg = Figure::new("server_cpu_us_per_msg", cpu * 1e6 / k.receipts as f64, "µs");
            f.push(if goals == Goals::Phones {
                per_msg.goal(Op::AtMost, 60.0)
            } else {
                per_msg
            });
        }
        if k.delivered > 0 {
            f.push(Figure::new(
                "server_cpu_us_per_copy",
                cpu * 1e6 / k.delivered as f64,
                "µs",
            ));
        }
    }
    if let Some(cpu) = report.generator_cpu_secs {
        f.push(Figure::new("generator_cpu_secs", cpu, "s"));
        if k.receipts > 0 {
            f.push(Figure::new(
                "generator_cpu_us_per_msg",
                cpu * 1e6 / k.receipts as f64,
                "µs",
            ));
        }
    }
    let (p50, p99, p999) = (ms(l.p50_us), ms(l.p99_us), ms(l.p999_us));
    match goals {
        Goals::Latency => {
            f.push(Figure::new("p50_ms", p50, "ms").goal(Op::AtMost, 0.5));
            f.push(Figure::new("p99_ms", p99, "ms").goal(Op::AtMost, 5.0));
            f.push(Figure::new("p999_ms", p999, "ms").goal(Op::AtMost, 20.0));
        }
        Goals::Phones => {
            f.push(Figure::new("p50_ms", p50, "ms"));
            f.push(Figure::new("p99_ms", p99, "ms").goal(Op::AtMost, 5.0));
            f.push(Figure::new("p999_ms", p999, "ms"));
        }
        Goals::Throughput | Goals::Compare => {
            f.push(Figure::new("p50_ms", p50, "ms"));
            f.push(Figure::new("p99_ms", p99, "ms"));
            f.push(Figure::new("p999_ms", p999, "ms"));
        }
    }
    f.push(Figure::new("max_ms", ms(l.max_us), "ms"));
    // A stall shows as a maximum far above the p99.9: a few messages all
    // held up at once, not a slow tail.
    let stall = Figure::new("stall_ms", ms(l.max_us.saturating_sub(l.p999_us)), "ms");
    f.push(if goals == Goals::Phones {
        stall.goal(Op::AtMost, 20.0)
    } else {
        stall
    });
    let d = report.hists.deliver.summary();
    let deliver_p50 = Figure::new("deliver_p50_ms", ms(d.p50_us), "ms");
    f.push(if goals == Goals::Phones {
        deliver_p50.goal(Op::AtMost, 1.0)
    } else {
        deliver_p50
    });
    f.push(Figure::new("deliver_p99_ms", ms(d.p99_us), "ms"));
    f.push(Figure::new("deliver_p999_ms", ms(d.p999_us), "ms"));
    f.push(Figure::new("deliver_max_ms", ms(d.max_us), "ms"));
    // From when the send was written: the server's part of the delivery.
    let w = report.hists.deliver_from_write.summary();
    if w.count > 0 {
        f.push(Figure::new("deliver_from_write_p50_ms", ms(w.p50_us), "ms"));
        f.push(Figure::new("deliver_from_write_p99_ms", ms(w.p99_us), "ms"));
    }
    let ack = report.hists.ack.summary();
    f.push(Figure::new("ack_p50_ms", ms(ack.p50_us), "ms"));
    f.push(Figure::new("ack_p99_ms", ms(ack.p99_us), "ms"));
    let lag = report.hists.lag.summary();
    f.push(Figure::new("send_lag_p50_ms", ms(lag.p50_us), "ms"));
    f.push(Figure::new("send_lag_p99_ms", ms(lag.p99_us), "ms"));
    f
}

// ---------------------------------------------------------------------------
// phones: the real workload

/// Many sessions, few messages each: ejabberd's benchmark shape (10,000
/// users online as 5,000 pairs, 64-byte bodies, each sender under one
/// message a second), with DELIVERED receipts. `chat` with these defaults
/// and the goals of a phone fleet: server CPU per message, receipt p99,
/// deliver p50 and stalls.
#[derive(Args, Clone, Debug, Serialize)]
pub struct PhonesArgs {
    #[command(flatten)]
    pub common: Common,
    /// Online pairs of users (sessions: twice this).
    #[arg(long, default_value_t = 5000)]
    pub pairs: usize,
    /// Total messages per second over all senders (first step with
    /// --find-max); 3,000/s is 0.6 a second per sender.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Seconds of sending (per step with --find-max).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Message body bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    pub body: usize,
    /// Seconds to wait after sending for the last acks and receipts.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Raise the rate step by step until the server falls behind.
    #[arg(long)]
    pub find_max: bool,
    #[arg(long, default_value_t = 1.25)]
    pub step_factor: f64,
    #[arg(long, default_value_t = 10)]
    pub max_steps: usize,
    /// A step fails when its receipt p99 exceeds this many ms.
    #[arg(long, default_value_t = 1000.0)]
    pub max_p99_ms: f64,
}

impl From<PhonesArgs> for ChatArgs {
    fn from(a: PhonesArgs) -> Self {
        ChatArgs {
            common: a.common,
            pairs: a.pairs,
            devices: 1,
            rate: a.rate,
            duration: a.duration,
            body: a.body,
            window: 128,
            drain: a.drain,
            find_max: a.find_max,
            step_factor: a.step_factor,
            max_steps: a.max_steps,
            max_p99_ms: a.max_p99_ms,
            offline_partners: false,
            xmpp: None,
        }
    }
}

pub async fn phones(a: PhonesArgs) -> anyhow::Result<RunResult> {
    chat(a.into(), "phones").await
}

// ---------------------------------------------------------------------------
// xmpp: the same workload against an XMPP server

/// `phones` against an XMPP server (ejabberd from `bench/ejabberd.sh`):
/// the same pairs, rate, bodies and schedule over plain TCP XMPP streams
/// with anonymous logins. With `--receipts` each message asks for an
/// XEP-0184 receipt, which the partner sends back at once, and a message
/// is done at its receipt; without, at its delivery. Give `--server-pid`
/// (ejabberd's `beam.smp`) for its CPU per message.
#[derive(Args, Clone, Debug, Serialize)]
pub struct XmppArgs {
    #[command(flatten)]
    pub phones: PhonesArgs,
    /// The XMPP server's client port; loopback only.
    #[arg(long, default_value = "127.0.0.1:15222")]
    pub xmpp: std::net::SocketAddrV4,
    /// Ask for and send back XEP-0184 delivery receipts.
    #[arg(long)]
    pub receipts: bool,
}

pub async fn xmpp(a: XmppArgs) -> anyhow::Result<RunResult> {
    if !a.xmpp.ip().is_loopback() {
        bail!("--xmpp must be a loopback address, not {}", a.xmpp);
    }
    if a.phones.body < crate::jobs::XMPP_MIN_BODY {
        bail!(
            "--body must be at least {} for xmpp",
            crate::jobs::XMPP_MIN_BODY
        );
    }
    let mut chat: ChatArgs = a.phones.into();
    chat.xmpp = Some(XmppTarget {
        addr: a.xmpp,
        receipts: a.receipts,
    });
    self::chat(chat, "xmpp").await
}

// ---------------------------------------------------------------------------
// offline

#[derive(Args, Clone, Debug, Serialize)]
pub struct OfflineArgs {
    #[command(flatten)]
    pub common: Common,
    /// Offline recipients (connected only for the drain).
    #[arg(long, default_value_t = 1000)]
    pub recipients: usize,
    /// Senders queueing the messages.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages to queue.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Message body bytes.
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Sends without a ServerAck per sender, at most.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Bound on the whole run (queue and drain), seconds.
    #[arg(long, default_value_t = 900.0)]
    pub max_secs: f64,
}

pub async fn offline(a: OfflineArgs) -> anyhow::Result<RunResult> {
    let mut p = Vec::new();
    check_secs(&mut p, "--max-secs", a.max_secs);
    if a.senders == 0 || a.recipients == 0 || a.senders + a.recipients > MAX_SESSIONS_PER_WORKER {
        p.push(format!(
            "--senders and --recipients must be > 0 and together <= {MAX_SESSIONS_PER_WORKER}"
        ));
    }
    if !(1..=10_000_000).contains(&a.messages) {
        p.push("--messages must be 1..=10,000,000".into());
    }
    if !(16..=parley_proto::limits::MAX_BODY_BYTES).contains(&a.body) {
        p.push("--body must be 16..=64512".into());
    }
    if !(1..=128).contains(&a.window) {
        p.push("--window must be 1..=128".into());
    }
    check(&a.common, p)?;
    let c = &a.common;
    let creds = c.creds(a.senders + a.recipients)?;
    let before = c.rss();
    let one_worker = std::iter::once(0..a.senders + a.recipients).collect();
    let specs = c.specs(&creds, one_worker, |_| Job::Offline {
        senders: a.senders,
        messages: a.messages,
        body_len: a.body,
        window: a.window,
        max_secs: a.max_secs,
    });
    let mut fleet = Fleet::spawn(&specs).await?;
    let queued = fleet
        .ready(Duration::from_secs_f64(a.max_secs + 60.0))
        .await?;
    // Let the server settle (freed buffers, lazy work) before reading.
    sleep(Duration::from_secs(2)).await;
    let after = c.rss();
    eprintln!(
        "queued {} of {} in {:.1} s; draining",
        queued.acked,
        a.messages,
        queued.queue_ms as f64 / 1000.0
    );
    fleet.go(GO_LEAD).await?;
    let report = fleet
        .reports(Duration::from_secs_f64(a.max_secs + 120.0))
        .await?;
    let k = &report.counters;
    let mut figures = Vec::new();
    if let (Some(before), Some(after)) = (before, after) {
        let per = after.saturating_sub(before) as f64 / queued.acked.max(1) as f64;
        figures.push(Figure::new("bytes_per_queued_msg", per, "B").goal(Op::AtMost, 300.0));
    }
    figures.push(Figure::new(
        "queue_msgs_per_s",
        queued.acked as f64 / (queued.queue_ms.max(1) as f64 / 1000.0),
        "msg/s",
    ));
    figures.push(
        Figure::new(
            "drain_msgs_per_s",
            k.delivered as f64 / (k.drain_ms.max(1) as f64 / 1000.0),
            "msg/s",
        )
        .goal(Op::AtLeast, 200_000.0),
    );
    figures.push(
        Figure::new("lost", k.acked.saturating_sub(k.delivered) as f64, "msg")
            .goal(Op::AtMost, 0.0),
    );
    figures.push(Figure::new("duplicates", k.duplicates as f64, "msg").goal(Op::AtMost, 0.0));
    let mut result =
        RunResult::new("offline", &c.ws, serde_json::to_value(&a)?).with_report(&report);
    result.figures = figures;
    result.extra = serde_json::json!({
        "rss_before_bytes": before,
        "rss_queued_bytes": after,
        "queued": queued.acked,
    });
    c.finish(result)
}

// ---------------------------------------------------------------------------
// floor

#[derive(Args, Clone, Debug, Serialize)]
pub struct FloorArgs {
    /// Where the result JSON, summary, SVG and the echo server's
    /// certificate go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Idle sessions held against the echo server (0 skips idle).
    #[arg(long, default_value_t = 19_000)]
    pub sessions: usize,
    /// Seconds to hold them.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Login loops at once (0 skips login).
    #[arg(long, default_value_t = 64)]
    pub login_concurrency: usize,
    /// Seconds of logging in.
    #[arg(long, default_value_t = 10.0)]
    pub login_duration: f64,
    /// Echo sessions (0 skips echo).
    #[arg(long, default_value_t = 1000)]
    pub echo_sessions: usize,
    /// Total echo messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds of echoing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    #[arg(long, default_value_t = 128)]
    pub window: usize,
}

pub async fn floor(a: FloorArgs) -> anyhow::Result<RunResult> {
    let mut p = Vec::new();
    check_secs(&mut p, "--hold", a.hold);
    check_secs(&mut p, "--login-duration", a.login_duration);
    check_secs(&mut p, "--duration", a.duration);
    if a.sessions > MAX_SESSIONS || a.echo_sessions > MAX_SESSIONS || a.login_concurrency > 10_000 {
        p.push("too many sessions".into());
    }
    if !(a.rate > 0.0 && a.rate <= 10_000_000.0) {
        p.push("--rate must be in (0, 10,000,000]".into());
    }
    if !(16..=parley_proto::limits::MAX_BODY_BYTES).contains(&a.body)
        || !(1..=128).contains(&a.window)
    {
        p.push("--body must be 16..=64512 and --window 1..=128".into());
    }
    if !p.is_empty() {
        bail!("bad options:\n  {}", p.join("\n  "));
    }
    let (cert, key) = crate::echo::ensure_cert(&a.out.join("floor-tls"))?;
    let mut server = EchoProcess::start(&cert, &key).await?;
    let common = Common {
        data_dir: None,
        tokens: None,
        ca: Some(cert.clone()),
        ws: format!("wss://{}/v1/ws", server.addr),
        server_pid: Some(server.pid),
        out: a.out.clone(),
        parley_bin: None,
        fresh_users: false,
        workers: a.workers,
        connect_concurrency: a.connect_concurrency,
        floor: None,
    };
    let creds = Creds {
        tokens: None,
        ca: cert,
    };
    let outcome = floor_phases(&a, &common, &creds).await;
    server.stop().await;
    let (figures, report, extra) = outcome?;
    let mut result =
        RunResult::new("floor", &common.ws, serde_json::to_value(&a)?).with_report(&report);
    result.figures = figures;
    result.extra = extra;
    common.finish(result)
}

async fn floor_phases(
    a: &FloorArgs,
    c: &Common,
    creds: &Creds,
) -> anyhow::Result<(Vec<Figure>, Report, serde_json::Value)> {
    let mut figures = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut last = Report::default();
    if a.sessions > 0 {
        let (report, idle_extra, f) = hold_sessions(c, creds, a.sessions, a.hold, 60).await?;
        figures.extend(f);
        extra.insert("idle".into(), idle_extra);
        last = report;
    }
    if a.login_concurrency > 0 {
        let users = a.login_concurrency * 4;
        let report = login_run(
            c,
            creds,
            users,
            a.login_concurrency,
            a.login_duration,
            1_000_000,
        )
        .await?;
        figures.extend(login_result_figures(&report, a.login_duration));
        last = report;
    }
    if a.echo_sessions > 0 {
        let ranges = split(a.echo_sessions, c.workers);
        let n = a.echo_sessions as f64;
        let specs = c.specs(creds, ranges.clone(), |i| Job::Chat {
            devices: 1,
            rate: a.rate * ranges[i].len() as f64 / n,
            secs: a.duration,
            body_len: a.body,
            window: a.window,
            drain_secs: 10.0,
            echo: true,
            offline_partners: false,
        });
        let mut fleet = Fleet::spawn(&specs).await?;
        fleet.ready(Duration::from_secs(120)).await?;
        let server_before = c.cpu_secs();
        let generator_before = fleet.cpu_secs();
        fleet.go(GO_LEAD).await?;
        let report = fleet
            .reports(Duration::from_secs_f64(a.duration + 130.0))
            .await?;
        let k = &report.counters;
        let l = report.hists.echo.summary();
        // The echo server's CPU per echoed message (two frames, against a
        // Parley message's six with its ack and receipt), and the
        // generator's.
        if let (Some(before), Some(after)) = (server_before, c.cpu_secs())
            && k.echoed > 0
        {
            figures.push(Figure::new(
                "server_cpu_us_per_msg",
                (after - before) * 1e6 / k.echoed as f64,
                "µs",
            ));
        }
        if let Some(after) = fleet.cpu_at_done
            && k.echoed > 0
        {
            figures.push(Figure::new(
                "generator_cpu_us_per_msg",
                (after - generator_before) * 1e6 / k.echoed as f64,
                "µs",
            ));
        }
        figures.push(Figure::new("offered_msgs_per_s", a.rate, "msg/s"));
        figures.push(Figure::new(
            "msgs_per_s",
            sustained(&report, a.duration),
            "msg/s",
        ));
        figures.push(Figure::new(
            "lost",
            (k.sent - k.echoed.min(k.sent) + k.unsent) as f64,
            "msg",
        ));
        figures.push(Figure::new("p50_ms", ms(l.p50_us), "ms"));
        figures.push(Figure::new("p99_ms", ms(l.p99_us), "ms"));
        figures.push(Figure::new("p999_ms", ms(l.p999_us), "ms"));
        figures.push(Figure::new("max_ms", ms(l.max_us), "ms"));
        let lag = report.hists.lag.summary();
        figures.push(Figure::new("send_lag_p50_ms", ms(lag.p50_us), "ms"));
        last = report;
    }
    Ok((figures, last, serde_json::Value::Object(extra)))
}

/// The echo server, run as a child process so its memory is its own.
struct EchoProcess {
    child: tokio::process::Child,
    pid: u32,
    addr: String,
}

impl EchoProcess {
    async fn start(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "echo-server",
                "--exit-on-stdin-eof",
                "--addr",
                "127.0.0.1:0",
                "--cert",
            ])
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the echo server")?;
        let pid = child.id().context("echo server pid")?;
        let stdout = child.stdout.take().context("echo server stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the echo server did not start")??
            .context("the echo server exited")?;
        let addr = line
            .strip_prefix("echo ready addr=")
            .with_context(|| format!("unexpected line from the echo server: {line}"))?
            .to_string();
        Ok(Self { child, pid, addr })
    }

    async fn stop(&mut self) {
        // Closing its stdin asks it to stop; the kill is the fallback.
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
