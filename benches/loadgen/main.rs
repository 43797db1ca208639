//! Load generator: registers campaigns on a running hub, posts signed
//! provider webhooks at it (WhatsApp, or SES through SNS), holds SSE
//! subscribers open meanwhile, and reports throughput, latency, fan-out
//! delay and the hub's memory; then checks that the hub's counters are what
//! the statuses it acknowledged make them.
//!
//! ```text
//! cargo build --release --bin statushub --bench loadgen
//! target/release/statushub serve &                 # SQLite, synchronous=FULL
//! cargo bench --bench loadgen -- --messages 10000 --concurrency 64 --seconds 10
//! ```
//!
//! Secrets are read as `statushub simulate` reads them: the environment
//! (`STATUSHUB_ADMIN_TOKEN`, `WHATSAPP_WEBHOOK_SECRET`) or the hub's
//! `--data-dir` (`.statushub/secrets.json`). `--help` lists every flag.
//!
//! # What a run does
//!
//! 1. Registers `--campaigns` C campaigns of `--messages` M messages each
//!    (`--messages` is per campaign; C × M in all) as the admin, tenant
//!    `--tenant` (`load`), campaigns `load-<run>-<n>` (`--run-id`, random by
//!    default, so runs never share messages), in chunks of
//!    `--register-chunk` (10,000) rows per `POST /api/v1/messages`,
//!    `--register-parallel` (4) in flight. `--mode seed` stops here.
//! 2. Plans every status of every message (see `plan.rs`: a fixed mix of
//!    lifecycles, stage by stage, campaigns interleaved) in `--order`:
//!    `in-order`, `shuffled` (each message's statuses in a random order,
//!    so a read may come before its delivery) or `duplicated` (each status
//!    again at a random later point). `--per-request` N statuses go in one
//!    WhatsApp webhook (Meta batches; 20 for the tables); SES is one event
//!    per SNS notification. The plan is played `--laps` times (default
//!    once; 0 = until `--seconds` runs out); every lap after the first is
//!    redeliveries, which the hub answers as duplicates.
//! 3. Connects `--subscribers` metrics-only and `--status-subscribers`
//!    `?include=statuses` SSE streams, spread over the campaigns and
//!    instances, each holding its snapshot before the load starts (see
//!    `sse.rs` for the delays measured).
//! 4. Sends the load for at most `--seconds`:
//!    - closed loop (no `--rate`): `--concurrency` connections each send
//!      the next request when the previous one is answered; latency from
//!      the send. This finds the saturating throughput.
//!    - open loop (`--rate R`, requests per second): request i is due at
//!      start + i/R, whatever the hub does; at most `--concurrency` in
//!      flight; latency from the due time, so a stalled hub's backlog
//!      counts (no coordinated omission). The report gives the achieved
//!      rate and the requests that started more than 2 ms late. The
//!      target "p99 at half the saturating rate" is `--rate` = half the
//!      closed loop's requests/s.
//!
//!    SES notifications are signed before the clock starts (RSA costs the
//!    generator about 2 ms of CPU each): those the run may send, up to
//!    `--presign` (100,000); any beyond are signed as they are sent, and the
//!    report counts them.
//! 5. Reads every campaign's counters and compares them with the counters
//!    the acknowledged statuses make (the specification's status rules,
//!    written out in `plan.rs`), and the webhook receipts' totals with
//!    what was sent (applied = distinct statuses, duplicates = the rest,
//!    nothing unmatched). Exact only when every request got a 200, so it is
//!    skipped (and the run fails) otherwise. The process exits with 1 when
//!    a request failed or the comparison did not hold.
//! 6. Gives the subscribers up to `--sse-grace` seconds (5) to reach each
//!    campaign's final version, and reports them.
//!
//! With `--hub-pid PID` (comma-separate several instances' pids) it reads
//! the hub's VmRSS from /proc/PID/status before the subscribers connect,
//! with them connected and idle (one second later), and at the end of the
//! load, hence the RSS per idle subscriber. `--mode ready --hub-pid PID`
//! waits for `/readyz` and reports how long after the hub process started
//! it first answered 200 (to 10 ms). The generator raises its own
//! open-file limit to the hard limit, so 10,000 subscribers fit.
//!
//! `--url a,b` spreads connections and subscribers over several instances
//! of one hub (a scale-out over one PostgreSQL); registration and counters
//! go to the first.
//!
//! # SES load
//!
//! The generator makes an RSA key per run and writes its self-signed
//! certificate into `--sns-cert-dir` (or `SNS_CERT_DIR`), which must be the
//! hub's `SNS_CERT_DIR` on the same machine; the hub reads the file when it
//! first meets the run's `SigningCertURL`, so no restart is needed. The
//! notifications come from topic `--sns-topic-arn` (default
//! `arn:aws:sns:us-east-1:123456789012:statushub-simulate`): leave the hub's
//! `SNS_TOPIC_ARNS` unset (any topic) or include that one. With a
//! `SES_WEBHOOK_SECRET`, pass it as `--ses-webhook-secret` (or the same
//! variable).
//!
//! ```text
//! SNS_CERT_DIR=/tmp/bench/sns-certs target/release/statushub serve &
//! cargo bench --bench loadgen -- --channel ses --sns-cert-dir /tmp/bench/sns-certs --messages 10000
//! ```
//!
//! # Layout
//!
//! `options` (flags), `plan` (what is sent, expected counters), `payload`
//! (bodies and signatures), `rate` (closed and open loop), `histogram`,
//! `hub` (registration, counters, readiness), `sse` (subscribers),
//! `procfs` (RSS, process age), `report` (lines and JSON), `run` (one run).
//! This bench has no test harness, so the modules' unit tests, and a smoke
//! test of [`run::run`] against a real hub, are compiled by the `api` test
//! binary, which includes these files (`tests/api/loadgen.rs`):
//! `cargo test --test api loadgen`. Modules refer to each other through
//! `super::` so that they compile in both crates.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Cargo builds a harness-less bench with `--cfg test` but without the test
// harness: the modules' `#[cfg(test)] mod tests` compile with their `#[test]`
// functions dropped, so their helpers would be reported unused here. The api
// test binary compiles the same modules with the harness, lints included.
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod conn;
mod histogram;
mod hub;
mod options;
mod payload;
mod plan;
mod procfs;
mod rate;
mod report;
mod run;
mod sse;

use options::Options;

/// The hub's allocator for the generator too: with glibc's, `malloc` and
/// `free` were about a fifth of the generator's CPU, which the hub then
/// lacked on the two shared cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let options = match Options::parse_args(std::env::args()) {
        Ok(options) => options,
        Err(error) => error.exit(),
    };
    let json = options.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let summary = match runtime.block_on(run::run(options)) {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::exit(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("a summary is JSON")
        );
    }
    if !summary.passed() {
        std::process::exit(1);
    }
}
