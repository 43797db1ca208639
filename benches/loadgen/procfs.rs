//! The hub's process, seen through Linux's /proc: its resident memory
//! (`VmRSS` of /proc/PID/status) and how long ago it started (field 22 of
//! /proc/PID/stat, in clock ticks since boot, against /proc/uptime).
//! Linux's clock tick for /proc is USER_HZ, 100 per second on every
//! architecture Rust targets, so start times are known to 10 ms.

use anyhow::{Context as _, anyhow};
use std::time::Duration;

/// /proc's clock ticks per second.
const USER_HZ: u64 = 100;

/// `VmRSS` in KiB from the text of /proc/PID/status.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// The resident memory of the processes `pids`, summed, in KiB.
pub fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        total += parse_vm_rss_kib(&status).ok_or_else(|| anyhow!("no VmRSS in {path}"))?;
    }
    Ok(total)
}

/// The start time (field 22, clock ticks after boot) from the text of
/// /proc/PID/stat. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 is the first after the name; field 22 is the 20th.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Seconds since boot from the text of /proc/uptime.
pub fn parse_uptime(uptime: &str) -> Option<f64> {
    uptime.split_whitespace().next()?.parse().ok()
}

/// How long ago process `pid` started.
pub fn process_age(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_start_ticks(&stat).ok_or_else(|| anyhow!("no start time in {path}"))?;
    let uptime = parse_uptime(&std::fs::read_to_string("/proc/uptime")?)
        .context("cannot read /proc/uptime")?;
    let started = ticks as f64 / USER_HZ as f64;
    Ok(Duration::from_secs_f64((uptime - started).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_the_status_file() {
        let status =
            "Name:\tstatushub\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 40000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(51_234));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    /// A command name with spaces and parentheses does not shift fields.
    #[test]
    fn start_ticks_are_field_22() {
        let stat = "4242 (status (hub) x) S 1 4242 4242 0 -1 4194560 1289 0 0 0 12 3 0 0 20 0 9 0 \
                    987654 123456789 5000 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_uptime("12345.67 20000.00\n"), Some(12_345.67));
    }

    /// This very process: it has a resident size and started a moment ago
    /// (test binaries live for minutes at most).
    #[test]
    fn the_current_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(&[pid]).unwrap() > 0);
        assert!(process_age(pid).unwrap() < Duration::from_secs(3_600));
        assert!(rss_kib(&[u32::MAX]).is_err());
    }
}
