//! What a worker measures and how workers' measurements are added up.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits, up
//! to 10 minutes), so percentiles stay exact enough at any rate and
//! histograms from several workers merge without loss. Across the process
//! boundary a histogram travels as base64 of hdrhistogram's V2 encoding.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize, Serializer};

/// The largest latency recorded exactly; anything slower is clamped to it.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        self.0.add(&other.0).expect("histograms with equal bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.0.len(),
            p50_us: self.quantile_us(0.5),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.0.max(),
            mean_us: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean()
            },
        }
    }

    pub fn to_base64(&self) -> String {
        let mut out = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut out)
            .expect("serializing into a Vec does not fail");
        B64.encode(out)
    }

    pub fn from_base64(s: &str) -> anyhow::Result<Self> {
        let bytes = B64.decode(s).context("histogram is not base64")?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("histogram does not decode: {e:?}"))?;
        let mut out = Self::default();
        out.0.add(&h).context("histogram out of bounds")?;
        Ok(out)
    }
}

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// The percentiles the result file and the summary show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Counters of one second of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    /// Messages (or logins) started in this second.
    pub sent: u64,
    /// Work completed in this second: server acks, logins, echoes.
    pub done: u64,
    /// Deliveries received by recipients.
    pub delivered: u64,
    /// Delivered receipts received by senders.
    pub receipts: u64,
    pub errors: u64,
    /// The headline latency of what completed in this second.
    pub latency: Latency,
}

impl Second {
    pub fn merge(&mut self, o: &Second) {
        self.sent += o.sent;
        self.done += o.done;
        self.delivered += o.delivered;
        self.receipts += o.receipts;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
    }
}

/// Per-second counters from a common start time, bounded in length: events
/// after the last second are folded into it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Series {
    pub seconds: Vec<Second>,
}

impl Series {
    pub fn with_len(len: usize) -> Self {
        Self {
            seconds: vec![Second::default(); len.max(1)],
        }
    }

    /// The bucket of `elapsed` since the start.
    pub fn at(&mut self, elapsed: Duration) -> &mut Second {
        let last = self.seconds.len() - 1;
        let i = usize::try_from(elapsed.as_secs())
            .unwrap_or(usize::MAX)
            .min(last);
        &mut self.seconds[i]
    }

    pub fn merge(&mut self, o: &Series) {
        if self.seconds.len() < o.seconds.len() {
            self.seconds.resize(o.seconds.len(), Second::default());
        }
        for (a, b) in self.seconds.iter_mut().zip(&o.seconds) {
            a.merge(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_through_base64() {
        let mut h = Latency::default();
        for us in [1u64, 10, 100, 1_000, 10_000, 1_000_000] {
            h.record(Duration::from_micros(us));
        }
        let back = Latency::from_base64(&h.to_base64()).expect("decodes");
        assert_eq!(back.summary(), h.summary());
        let json = serde_json::to_string(&h).expect("serializes");
        let back: Latency = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.len(), 6);
    }

    #[test]
    fn merging_workers_gives_the_percentiles_of_the_union() {
        // Worker A saw 990 fast answers, worker B 10 slow ones: p99 of the
        // union lies in B's range, which neither worker's p99 alone shows.
        let mut a = Latency::default();
        let mut b = Latency::default();
        for _ in 0..990 {
            a.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            b.record(Duration::from_millis(50));
        }
        let b = Latency::from_base64(&b.to_base64()).expect("travels");
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 100);
        assert!(s.p999_us >= 49_900, "{s:?}");
        assert!(s.max_us >= 49_900);
    }

    #[test]
    fn series_merge_and_clamp() {
        let mut a = Series::with_len(3);
        a.at(Duration::from_millis(500)).sent += 1;
        a.at(Duration::from_secs(99)).sent += 5; // folded into the last second
        let mut b = Series::with_len(4);
        b.at(Duration::from_secs(3)).done += 2;
        a.merge(&b);
        let sent: Vec<u64> = a.seconds.iter().map(|s| s.sent).collect();
        assert_eq!(sent, [1, 0, 5, 0]);
        assert_eq!(a.seconds[3].done, 2);
        let json = serde_json::to_string(&a).expect("serializes");
        let back: Series = serde_json::from_str(&json).expect("round trips");
        assert_eq!(back.seconds.len(), 4);
    }
}

/// Adds the listed fields of `$o` into `$s`.
macro_rules! add_fields {
    ($s:ident, $o:ident, $($f:ident),*) => { $( $s.$f += $o.$f; )* };
}

/// Everything a run counts. Each field is a sum over workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Sessions logged in (QueueEmpty seen) and held.
    pub connected: u64,
    /// Sessions that failed to connect or log in.
    pub connect_failed: u64,
    /// Deliveries and receipts left from an earlier run, acked at login.
    pub stale: u64,
    /// Completed logins (login scenario).
    pub logins: u64,
    pub login_failed: u64,
    /// Sends written (chat, offline, echo).
    pub sent: u64,
    /// Sends the server acked (ServerAck).
    pub acked: u64,
    pub send_errors: u64,
    /// Deliveries received, counting each message_id once.
    pub delivered: u64,
    /// Deliveries of a message already received.
    pub duplicates: u64,
    /// Deliveries whose sequence number skipped ahead (out of order or lost).
    pub gaps: u64,
    /// Messages whose DELIVERED receipt reached the sender.
    pub receipts: u64,
    /// Receipt ids for messages not waiting for one (a duplicate receipt).
    pub receipt_duplicates: u64,
    /// Echoes received (floor).
    pub echoed: u64,
    /// Sends scheduled but never written before the deadline.
    pub unsent: u64,
    /// Sends without a ServerAck (or echo) at the end.
    pub unacked: u64,
    /// Acked messages whose receipt never came back.
    pub unreceipted: u64,
    /// Chat with `--offline-partners`: messages acked for a partner that
    /// is offline (they stay queued; no receipt is expected).
    pub queued_offline: u64,
    /// Sessions the server closed during the run.
    pub closed: u64,
    /// Microseconds from the start to the last receipt (or echo): the
    /// end of the run's useful work, for its sustained rate.
    pub last_done_us: u64,
    /// Offline: milliseconds to queue every message.
    pub queue_ms: u64,
    /// Offline: milliseconds from the recipients' first connect to the last
    /// delivery.
    pub drain_ms: u64,
}

impl Counters {
    pub fn merge(&mut self, o: &Counters) {
        add_fields!(
            self,
            o,
            connected,
            connect_failed,
            stale,
            logins,
            login_failed,
            sent,
            acked,
            send_errors,
            delivered,
            duplicates,
            gaps,
            receipts,
            receipt_duplicates,
            echoed,
            unsent,
            unacked,
            unreceipted,
            queued_offline,
            closed
        );
        // Phases run in parallel across workers: the slowest one counts.
        self.queue_ms = self.queue_ms.max(o.queue_ms);
        self.drain_ms = self.drain_ms.max(o.drain_ms);
        self.last_done_us = self.last_done_us.max(o.last_done_us);
    }
}

/// The latency histograms of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hists {
    /// TCP connect to QueueEmpty.
    pub login: Latency,
    /// Intended send time to ServerAck.
    pub ack: Latency,
    /// Intended send time to Deliver at the recipient.
    pub deliver: Latency,
    /// The moment the generator wrote the send to Deliver at the
    /// recipient: the server's part (and the kernel's), without the
    /// generator's lateness (`lag`). Not open loop: a generator that falls
    /// behind hides the server's queueing here, never in `deliver`.
    pub deliver_from_write: Latency,
    /// Intended send time to the DELIVERED receipt at the sender.
    pub receipt: Latency,
    /// Intended send time to the echo (floor).
    pub echo: Latency,
    /// Intended send time to the moment the generator wrote the send: its
    /// own lateness (timer resolution, a busy generator), which every other
    /// latency includes.
    pub lag: Latency,
}

impl Hists {
    pub fn merge(&mut self, o: &Hists) {
        self.login.merge(&o.login);
        self.ack.merge(&o.ack);
        self.deliver.merge(&o.deliver);
        self.deliver_from_write.merge(&o.deliver_from_write);
        self.receipt.merge(&o.receipt);
        self.echo.merge(&o.echo);
        self.lag.merge(&o.lag);
    }
}

/// What a worker reports, and what the coordinator adds up.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub counters: Counters,
    pub hists: Hists,
    pub series: Series,
    /// The server's CPU time over the run, when the coordinator could read
    /// it (`--server-pid`); workers leave it empty.
    pub server_cpu_secs: Option<f64>,
    /// The load generator's CPU time over the same span (its workers and
    /// coordinator), filled in by the coordinator.
    pub generator_cpu_secs: Option<f64>,
}

impl Report {
    pub fn merge(&mut self, o: &Report) {
        self.counters.merge(&o.counters);
        self.hists.merge(&o.hists);
        self.series.merge(&o.series);
    }
}

/// A worker's report in the making, shared by its session tasks behind a
/// `std::sync::Mutex`: each task locks it for a few counter increments and
/// a histogram record, never across an `.await`.
#[derive(Debug)]
pub struct Recorder {
    pub report: Report,
    /// Second 0 of the series; the run's common start.
    pub start: std::time::Instant,
}

impl Recorder {
    pub fn new(series_secs: usize) -> Self {
        Self {
            report: Report {
                series: Series::with_len(series_secs),
                ..Report::default()
            },
            start: std::time::Instant::now(),
        }
    }

    /// Notes that useful work completed at `now`.
    pub fn done_at(&mut self, now: std::time::Instant) {
        let us = now.saturating_duration_since(self.start).as_micros();
        let us = u64::try_from(us).unwrap_or(u64::MAX);
        self.report.counters.last_done_us = self.report.counters.last_done_us.max(us);
    }

    /// A message done at `now` (its first receipt, or where a run counts
    /// delivery as done, its delivery), `latency` after it was due.
    pub fn receipt(&mut self, now: std::time::Instant, latency: std::time::Duration) {
        self.report.counters.receipts += 1;
        self.report.hists.receipt.record(latency);
        self.done_at(now);
        let second = self.second(now);
        second.receipts += 1;
        second.latency.record(latency);
    }

    /// The series bucket `now` falls in.
    pub fn second(&mut self, now: std::time::Instant) -> &mut Second {
        let elapsed = now.saturating_duration_since(self.start);
        self.report.series.at(elapsed)
    }
}
