//! The result of a run: a JSON file, a one-screen summary with every figure
//! beside its goal (and beside the floor's, when given), and the plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::stats::{Counters, LatencySummary, Report};

/// How a figure compares with its goal.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<=")]
    AtMost,
    #[serde(rename = ">=")]
    AtLeast,
}

/// A target from the table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub op: Op,
    pub value: f64,
}

/// One headline number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable name (`logins_per_s`); the floor's figure of the same name is
    /// shown beside it.
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub goal: Option<Goal>,
    /// Whether `value` meets `goal`; absent without a goal.
    pub met: Option<bool>,
    /// The same figure against the echo server, when a floor result was given.
    pub floor: Option<f64>,
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            goal: None,
            met: None,
            floor: None,
        }
    }

    pub fn goal(mut self, op: Op, value: f64) -> Self {
        self.met = Some(match op {
            Op::AtMost => self.value <= value,
            Op::AtLeast => self.value >= value,
        });
        self.goal = Some(Goal { op, value });
        self
    }
}

/// One second of the run, as plotted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the measured phase started.
    pub t: u64,
    pub sent: u64,
    /// Completed per second: acks, logins or echoes.
    pub done: u64,
    pub delivered: u64,
    pub receipts: u64,
    pub errors: u64,
    /// Percentiles of the headline latency of what completed this second.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The result file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// UTC, RFC 3339.
    pub date: String,
    /// `git rev-parse HEAD` where the tool ran, if that is a checkout.
    pub git_commit: Option<String>,
    pub target: String,
    /// Every parameter of the run, as given or defaulted.
    pub parameters: serde_json::Value,
    pub figures: Vec<Figure>,
    pub counters: Counters,
    /// Latency percentiles by kind (login, ack, deliver, receipt, echo);
    /// only kinds that recorded something.
    pub latency: BTreeMap<String, LatencySummary>,
    /// Scenario-specific extras (memory samples, ramp steps).
    pub extra: serde_json::Value,
    pub series: Vec<Point>,
}

impl RunResult {
    pub fn new(scenario: &str, target: &str, parameters: serde_json::Value) -> Self {
        Self {
            scenario: scenario.into(),
            date: rfc3339_now(),
            git_commit: git_commit(),
            target: target.into(),
            parameters,
            figures: Vec::new(),
            counters: Counters::default(),
            latency: BTreeMap::new(),
            extra: serde_json::Value::Null,
            series: Vec::new(),
        }
    }

    /// Takes counters, latency summaries and the series from a report.
    pub fn with_report(mut self, report: &Report) -> Self {
        self.counters = report.counters.clone();
        let h = &report.hists;
        for (name, hist) in [
            ("login", &h.login),
            ("ack", &h.ack),
            ("deliver", &h.deliver),
            ("deliver_from_write", &h.deliver_from_write),
            ("receipt", &h.receipt),
            ("echo", &h.echo),
            ("lag", &h.lag),
        ] {
            if !hist.is_empty() {
                self.latency.insert(name.into(), hist.summary());
            }
        }
        self.series = points(report);
        self
    }

    /// Puts the floor's figures of the same name beside ours.
    pub fn beside_floor(&mut self, floor: &RunResult) {
        for f in &mut self.figures {
            f.floor = floor
                .figures
                .iter()
                .find(|g| g.name == f.name)
                .map(|g| g.value);
        }
    }

    /// Writes `<scenario>-<date>.json`, `.txt` (the summary) and `.svg`
    /// into `dir`; returns the JSON's path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stem = format!("{}-{}", self.scenario, self.date.replace(':', ""));
        let json = dir.join(format!("{stem}.json"));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join(format!("{stem}.txt")), self.summary())?;
        if !self.series.is_empty() {
            crate::plot::write_svg(&dir.join(format!("{stem}.svg")), self)?;
        }
        Ok(json)
    }

    /// The one-screen summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let commit = self.git_commit.as_deref().unwrap_or("unknown");
        let _ = writeln!(
            s,
            "parley-bench {}  {}  commit {:.12}  target {}",
            self.scenario, self.date, commit, self.target
        );
        let _ = writeln!(
            s,
            "{:<28} {:>14} {:<8} {:>14} {:>6} {:>12}",
            "figure", "value", "unit", "goal", "", "floor"
        );
        for f in &self.figures {
            let goal = f.goal.map_or(String::new(), |g| {
                let op = if g.op == Op::AtMost { "<=" } else { ">=" };
                format!("{op} {}", num(g.value))
            });
            let met = match f.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            let floor = f.floor.map_or(String::new(), num);
            let _ = writeln!(
                s,
                "{:<28} {:>14} {:<8} {:>14} {:>6} {:>12}",
                f.name,
                num(f.value),
                f.unit,
                goal,
                met,
                floor
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                s,
                "latency (ms)           count        p50       p99     p99.9       max"
            );
            for (name, l) in &self.latency {
                let ms = |us: u64| us as f64 / 1000.0;
                let _ = writeln!(
                    s,
                    "  {name:<18} {:>9} {:>10.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.count,
                    ms(l.p50_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    ms(l.max_us)
                );
            }
        }
        let c = &self.counters;
        let _ = writeln!(
            s,
            "counters: connected {} failed {} sent {} acked {} errors {} delivered {} receipts {} \
             duplicates {} gaps {} unacked {} unreceipted {} unsent {} closed {} stale {}",
            c.connected,
            c.connect_failed + c.login_failed,
            c.sent,
            c.acked,
            c.send_errors,
            c.delivered,
            c.receipts,
            c.duplicates,
            c.gaps,
            c.unacked,
            c.unreceipted,
            c.unsent,
            c.closed,
            c.stale
        );
        s
    }
}

/// A number for humans: thousands separated, at most 3 decimals.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        let n = v.round() as i64;
        let digits = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else {
        format!("{v:.3}")
    }
}

fn points(report: &Report) -> Vec<Point> {
    // Trailing empty seconds (the unused end of the series) are dropped.
    let secs = &report.series.seconds;
    let used = secs
        .iter()
        .rposition(|s| s.sent + s.done + s.delivered + s.receipts + s.errors > 0)
        .map_or(0, |i| i + 1);
    secs[..used]
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let l = s.latency.summary();
            Point {
                t: t as u64,
                sent: s.sent,
                done: s.done,
                delivered: s.delivered,
                receipts: s.receipts,
                errors: s.errors,
                p50_us: l.p50_us,
                p99_us: l.p99_us,
                p999_us: l.p999_us,
                max_us: l.max_us,
            }
        })
        .collect()
}

/// The commit of the checkout we run in, else of the one this binary was
/// built in (`target/release` sits inside it).
fn git_commit() -> Option<String> {
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    [std::path::PathBuf::from("."), exe_dir]
        .iter()
        .find_map(|dir| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["rev-parse", "HEAD"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(unix: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    i64::try_from(unix)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn goals_are_judged() {
        let f = Figure::new("login_p99_ms", 80.0, "ms").goal(Op::AtMost, 100.0);
        assert_eq!(f.met, Some(true));
        let f = Figure::new("logins_per_s", 2000.0, "1/s").goal(Op::AtLeast, 3000.0);
        assert_eq!(f.met, Some(false));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(0.5), "0.500");
        assert_eq!(num(42.0), "42");
    }

    #[test]
    fn result_json_has_the_documented_shape() {
        let mut report = Report {
            series: crate::stats::Series::with_len(5),
            ..Report::default()
        };
        report.series.at(Duration::from_secs(1)).done = 7;
        report
            .series
            .at(Duration::from_secs(1))
            .latency
            .record(Duration::from_millis(2));
        report.hists.receipt.record(Duration::from_millis(3));
        report.counters.sent = 7;
        let mut r = RunResult::new(
            "chat",
            "wss://127.0.0.1:5443/v1/ws",
            serde_json::json!({"rate": 7}),
        )
        .with_report(&report);
        r.figures
            .push(Figure::new("msgs_per_s", 7.0, "msg/s").goal(Op::AtLeast, 30_000.0));
        let mut floor = RunResult::new("floor", "x", serde_json::Value::Null);
        floor.figures.push(Figure::new("msgs_per_s", 70.0, "msg/s"));
        r.beside_floor(&floor);

        let v: serde_json::Value = serde_json::to_value(&r).expect("serializes");
        for key in [
            "scenario",
            "date",
            "git_commit",
            "target",
            "parameters",
            "figures",
            "counters",
            "latency",
            "extra",
            "series",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["figures"][0]["goal"]["op"], ">=");
        assert_eq!(v["figures"][0]["met"], false);
        assert_eq!(v["figures"][0]["floor"], 70.0);
        assert_eq!(v["latency"]["receipt"]["count"], 1);
        assert!(
            v["latency"].get("login").is_none(),
            "empty kinds are left out"
        );
        // The unused tail of the series is cut after the last busy second.
        assert_eq!(v["series"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["series"][1]["done"], 7);
        assert!(v["series"][1]["p50_us"].as_u64() >= Some(1990));
        let back: RunResult = serde_json::from_value(v).expect("parses back");
        assert_eq!(back.figures, r.figures);
        assert!(r.summary().contains("msgs_per_s"));
    }
}
