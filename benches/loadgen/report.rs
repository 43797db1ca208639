//! What a run reports: one human line per measure, printed as it is
//! measured, and the whole [`Summary`] as one line of JSON with `--json`,
//! for scripts that fill BENCHMARKS.md.

use std::collections::BTreeMap;

use serde::Serialize;

use super::histogram::Percentiles;
use super::hub::Registration;
use super::plan::Counters;
use super::rate::LATE_AFTER;

/// Everything a run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub run: String,
    pub mode: String,
    pub channel: String,
    pub order: String,
    pub campaigns: usize,
    pub messages_per_campaign: usize,
    pub per_request: usize,
    pub concurrency: usize,
    /// Open loop: requests per second offered.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub laps: usize,
    pub seed: u64,
    pub registration: Option<Registration>,
    pub ingest: Option<Ingest>,
    pub receipts: Option<Receipts>,
    pub check: Option<Check>,
    pub sse: Vec<Fanout>,
    pub rss: Option<Rss>,
    pub ready: Option<Ready>,
}

/// The webhooks sent and how the hub answered them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ingest {
    /// `open` or `closed`.
    pub mode: String,
    pub offered_rate: Option<f64>,
    /// Requests sent, and those answered 200.
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    /// Errors by HTTP status or kind (`timeout`, `connect`, …).
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Statuses in the requests answered 200.
    pub acknowledged_statuses: usize,
    /// From the start to the last reply.
    pub seconds: f64,
    pub requests_per_second: f64,
    pub statuses_per_second: f64,
    /// `due` (open loop) or `send` (closed loop).
    pub latency_from: String,
    pub latency: Percentiles,
    /// Open loop: requests that started more than 2 ms after their due
    /// time, and the start lag.
    pub late: usize,
    pub start_lag: Option<Percentiles>,
    /// Requests the plan (times `--laps`) holds; `None` when unbounded.
    pub planned_requests: Option<usize>,
    /// Whether every planned request was sent.
    pub plan_complete: bool,
    /// SES: seconds spent signing before the clock started, and
    /// notifications signed during the run (beyond what was signed before).
    pub presign_seconds: f64,
    pub signed_during_run: usize,
}

/// The hub's webhook receipts, added up, beside what the generator
/// expects of them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Receipts {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub unmatched: u64,
    pub dead_lettered: u64,
    pub expected_applied: u64,
    pub expected_duplicates: u64,
}

/// The hub's counters against what the acknowledged statuses make them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Check {
    pub campaigns: usize,
    pub matched: usize,
    /// Campaigns whose counters differ, and how (the first few).
    pub mismatches: Vec<String>,
    /// Receipt totals that differ from the expected ones.
    pub receipt_mismatches: Vec<String>,
    /// Why nothing was compared, when nothing was.
    pub skipped: Option<String>,
    /// The expected counters summed over the campaigns.
    pub expected_total: Counters,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.mismatches.is_empty() && self.receipt_mismatches.is_empty()
    }
}

/// One kind of SSE subscriber, added up.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fanout {
    /// `metrics` or `statuses`.
    pub kind: String,
    pub subscribers: usize,
    /// Events of the kind measured (`metrics` or `status`) received in all.
    pub events: u64,
    pub events_min_per_subscriber: u64,
    pub events_max_per_subscriber: u64,
    pub lagged: usize,
    pub ended_early: usize,
    pub reached_final: usize,
    /// `updated_at` (metrics) or `webhook 200` (statuses).
    pub delay_from: String,
    pub delay: Percentiles,
}

/// The hub's resident memory, in KiB.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rss {
    pub before_subscribers_kib: u64,
    pub idle_subscribers_kib: Option<u64>,
    pub per_idle_subscriber_kib: Option<f64>,
    pub end_of_load_kib: u64,
}

/// `--mode ready`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ready {
    /// From the hub process's start to the first 200 of `/readyz` (to 10 ms).
    pub seconds_since_start: f64,
    pub rss_kib: Option<u64>,
}

impl Summary {
    /// Whether the run went as planned: every request answered 200 and the
    /// counters checked and equal.
    pub fn passed(&self) -> bool {
        let ingest_ok = self.ingest.as_ref().is_none_or(|ingest| ingest.errors == 0);
        let check_ok = self.check.as_ref().is_none_or(Check::passed);
        ingest_ok && check_ok
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1_024.0
}

pub fn registration_line(registration: &Registration) -> String {
    format!(
        "registered {} messages in {} campaign(s) in {:.2} s: {:.0} messages/s ({} new, {} already known; chunks of {}, {} in parallel)",
        registration.messages,
        registration.campaigns,
        registration.seconds,
        registration.messages_per_second,
        registration.registered,
        registration.existing,
        registration.chunk,
        registration.parallel
    )
}

pub fn ingest_line(ingest: &Ingest, per_request: usize, concurrency: usize) -> String {
    let how = match ingest.offered_rate {
        Some(rate) => format!(
            "open loop at {rate} requests/s offered, {:.1} achieved, {} late to start (> {} ms; start lag p99 {:.2} ms)",
            ingest.requests_per_second,
            ingest.late,
            LATE_AFTER.as_millis(),
            ingest.start_lag.as_ref().map_or(0.0, |lag| lag.p99_ms)
        ),
        None => "closed loop".to_owned(),
    };
    let planned = match (ingest.planned_requests, ingest.plan_complete) {
        (Some(_), true) => "the whole plan".to_owned(),
        (Some(planned), false) => format!("{} of {planned} planned requests", ingest.requests),
        (None, _) => "laps until the clock ran out".to_owned(),
    };
    let mut errors = if ingest.errors_by_kind.is_empty() {
        "0 errors".to_owned()
    } else {
        format!("{} errors {:?}", ingest.errors, ingest.errors_by_kind)
    };
    if ingest.signed_during_run > 0 {
        errors.push_str(&format!(
            "; {} sns notifications signed during the run (beyond --presign)",
            ingest.signed_during_run
        ));
    }
    format!(
        "ingest ({how}; {concurrency} connections, {per_request} statuses per request): {} requests sent, {} answered 200, {} statuses acknowledged in {:.2} s ({planned}): {:.0} statuses/s, {:.0} requests/s; latency from {}: {}; {errors}",
        ingest.requests,
        ingest.ok,
        ingest.acknowledged_statuses,
        ingest.seconds,
        ingest.statuses_per_second,
        ingest.requests_per_second,
        ingest.latency_from,
        ingest.latency.brief()
    )
}

pub fn receipts_line(receipts: &Receipts) -> String {
    format!(
        "receipts: received {}, applied {}, duplicates {}, unmatched {}, dead-lettered {} (expected applied {}, duplicates {})",
        receipts.received,
        receipts.applied,
        receipts.duplicates,
        receipts.unmatched,
        receipts.dead_lettered,
        receipts.expected_applied,
        receipts.expected_duplicates
    )
}

pub fn check_line(check: &Check) -> String {
    if let Some(reason) = &check.skipped {
        return format!("counters: not checked: {reason}");
    }
    let mut line = format!(
        "counters: {} of {} campaign(s) equal what the acknowledged statuses make them (total {}, sent {}, delivered {}, read {}, failed {}, clicked {}, complained {})",
        check.matched,
        check.campaigns,
        check.expected_total.total,
        check.expected_total.sent,
        check.expected_total.delivered,
        check.expected_total.read,
        check.expected_total.failed,
        check.expected_total.clicked,
        check.expected_total.complained
    );
    for mismatch in check.mismatches.iter().chain(&check.receipt_mismatches) {
        line.push_str("\n  MISMATCH ");
        line.push_str(mismatch);
    }
    line
}

pub fn fanout_line(fanout: &Fanout) -> String {
    format!(
        "sse {}: {} subscribers, {} events ({} to {} per subscriber), {} lagged, {} ended early, {} of {} reached the final version; delay from {} to event: {}",
        fanout.kind,
        fanout.subscribers,
        fanout.events,
        fanout.events_min_per_subscriber,
        fanout.events_max_per_subscriber,
        fanout.lagged,
        fanout.ended_early,
        fanout.reached_final,
        fanout.subscribers,
        fanout.delay_from,
        fanout.delay.brief()
    )
}

pub fn rss_line(rss: &Rss, subscribers: usize) -> String {
    let idle = match (rss.idle_subscribers_kib, rss.per_idle_subscriber_kib) {
        (Some(idle), Some(each)) => format!(
            ", with {subscribers} idle subscribers {:.1} MiB ({each:.1} KiB each)",
            mib(idle)
        ),
        _ => String::new(),
    };
    format!(
        "hub rss: before subscribers {:.1} MiB{idle}, at the end of the load {:.1} MiB",
        mib(rss.before_subscribers_kib),
        mib(rss.end_of_load_kib)
    )
}

pub fn ready_line(ready: &Ready) -> String {
    let rss = ready
        .rss_kib
        .map_or_else(String::new, |kib| format!(", rss {:.1} MiB", mib(kib)));
    format!(
        "ready: /readyz answered 200 {:.2} s after the hub process started{rss}",
        ready.seconds_since_start
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_passes_only_without_errors_and_with_equal_counters() {
        let mut summary = Summary::default();
        assert!(summary.passed(), "nothing measured, nothing wrong");
        summary.ingest = Some(Ingest::default());
        summary.check = Some(Check::default());
        assert!(summary.passed());
        summary
            .check
            .as_mut()
            .unwrap()
            .mismatches
            .push("c0".to_owned());
        assert!(!summary.passed());
        summary.check = Some(Check {
            skipped: Some("errors".to_owned()),
            ..Check::default()
        });
        assert!(!summary.passed(), "an unchecked run did not pass");
        summary.check = Some(Check::default());
        summary.ingest.as_mut().unwrap().errors = 1;
        assert!(!summary.passed());
    }

    #[test]
    fn lines_say_what_was_measured() {
        let ingest = Ingest {
            mode: "open".to_owned(),
            offered_rate: Some(500.0),
            requests: 500,
            ok: 500,
            acknowledged_statuses: 10_000,
            seconds: 1.0,
            requests_per_second: 499.0,
            statuses_per_second: 9_980.0,
            latency_from: "due".to_owned(),
            late: 3,
            planned_requests: Some(800),
            ..Ingest::default()
        };
        let line = ingest_line(&ingest, 20, 64);
        for part in [
            "open loop at 500 requests/s",
            "3 late",
            "latency from due",
            "500 of 800",
            "0 errors",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        let check = Check {
            campaigns: 2,
            matched: 1,
            mismatches: vec!["campaign load-x-1: …".to_owned()],
            ..Check::default()
        };
        assert!(check_line(&check).contains("MISMATCH campaign load-x-1"));
        let rss = Rss {
            before_subscribers_kib: 10_240,
            idle_subscribers_kib: Some(20_480),
            per_idle_subscriber_kib: Some(10.24),
            end_of_load_kib: 30_720,
        };
        assert_eq!(
            rss_line(&rss, 1_000),
            "hub rss: before subscribers 10.0 MiB, with 1000 idle subscribers 20.0 MiB (10.2 KiB each), at the end of the load 30.0 MiB"
        );
    }
}
