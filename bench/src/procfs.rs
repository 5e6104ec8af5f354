//! The server's resident memory, from `/proc/<pid>/status`, and its CPU
//! time, from `/proc/<pid>/stat`.

use anyhow::Context as _;

/// `VmRSS` of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// `VmHWM` of process `pid` (its peak resident memory since it started,
/// or since [`reset_peak_rss`]), in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_kib(&status, "VmHWM:").with_context(|| format!("no VmHWM in {path}"))
}

/// Resets process `pid`'s `VmHWM` to its current resident memory (Linux:
/// `5` into `/proc/<pid>/clear_refs`; needs the right to trace it).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("cannot write {path}"))
}

/// User and system CPU time of process `pid` so far, in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SEC)
        .with_context(|| format!("no CPU times in {path}"))
}

/// `/proc` counts CPU time in USER_HZ ticks, which Linux fixes at 100 a
/// second for every architecture's user-space ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime (fields 14 and 15 of `stat`). The command name (field 2)
/// is in parentheses and may hold spaces: count from after its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is fields[0]: utime is field 14.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    parse_kib(status, "VmRSS:")
}

/// The `field` line of `status` (`VmRSS:  1234 kB`), in bytes.
fn parse_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tparley\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(s), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_cpu_times_even_with_spaces_in_the_name() {
        let stat = "42 (a (weird) name) S 1 1 1 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(320));
        assert!(cpu_secs(std::process::id()).expect("own stat") >= 0.0);
    }

    #[test]
    fn reads_our_own_rss() {
        assert!(rss_bytes(std::process::id()).expect("own status") > 0);
    }
}
