//! The load generator (`benches/loadgen/`): its modules, compiled here with
//! their unit tests (payloads, signing, plans and expected counters, rate
//! control, histogram, SSE reading, /proc parsing, report), since a
//! harness-less bench runs no tests; and smoke tests that run the generator
//! for about a second against a real hub and check that every request got a
//! 200 and that the hub's counters are what the statuses make them.
//!
//! No timing is asserted here: figures go in BENCHMARKS.md.

#[path = "../../benches/loadgen/conn.rs"]
mod conn;
#[path = "../../benches/loadgen/histogram.rs"]
mod histogram;
#[path = "../../benches/loadgen/hub.rs"]
mod hub;
#[path = "../../benches/loadgen/options.rs"]
mod options;
#[path = "../../benches/loadgen/payload.rs"]
mod payload;
#[path = "../../benches/loadgen/plan.rs"]
mod plan;
#[path = "../../benches/loadgen/procfs.rs"]
mod procfs;
#[path = "../../benches/loadgen/rate.rs"]
mod rate;
#[path = "../../benches/loadgen/report.rs"]
mod report;
#[path = "../../benches/loadgen/run.rs"]
mod run;
#[path = "../../benches/loadgen/sse.rs"]
mod sse;

use crate::helpers::{ADMIN_TOKEN, TestApp, WHATSAPP_SECRET, spawn_app, spawn_app_with};
use options::Options;
use report::Summary;

/// Parses the generator's flags, ignoring the environment.
fn options(args: &[String]) -> Options {
    let args = ["loadgen".to_owned()]
        .into_iter()
        .chain(args.iter().cloned());
    Options::parse_without_env(args).expect("valid flags")
}

/// The flags every smoke run shares: the hub, its secrets, a fixed seed.
fn base(app: &TestApp) -> Vec<String> {
    [
        "--url",
        &app.address,
        "--admin-token",
        ADMIN_TOKEN,
        "--whatsapp-webhook-secret",
        WHATSAPP_SECRET,
        "--seed",
        "11",
        "--hub-pid",
        &std::process::id().to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect()
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|arg| (*arg).to_owned()));
    args
}

/// Asserts that every planned request was sent and answered 200, and that
/// the hub's receipts add up: `statuses` distinct statuses applied, the
/// rest of `sent` duplicates.
fn assert_every_request_acknowledged(summary: &Summary, requests: usize, sent: u64, statuses: u64) {
    let ingest = summary.ingest.as_ref().expect("a load ran");
    assert_eq!(ingest.errors, 0, "{:?}", ingest.errors_by_kind);
    assert_eq!((ingest.requests, ingest.ok), (requests, requests));
    assert_eq!(ingest.planned_requests, Some(requests));
    assert!(ingest.plan_complete);
    assert_eq!(ingest.acknowledged_statuses as u64, sent);
    let receipts = summary.receipts.as_ref().unwrap();
    assert_eq!(
        (receipts.received, receipts.applied, receipts.duplicates),
        (sent, statuses, sent - statuses),
        "{receipts:?}"
    );
    assert_eq!((receipts.unmatched, receipts.dead_lettered), (0, 0));
    let check = summary.check.as_ref().unwrap();
    assert!(check.passed(), "{check:?}");
    assert!(summary.passed());
}

/// Asserts that the hub reports `expected` (a `GET …/metrics` body's
/// counters) for every campaign of the run, read here, apart from the
/// generator.
async fn assert_counters(app: &TestApp, summary: &Summary, expected: serde_json::Value) {
    for campaign in 0..summary.campaigns {
        let metrics = app
            .metrics(&plan::campaign_id(&summary.run, campaign))
            .await;
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(
                &metrics[key], value,
                "campaign {campaign}, {key}: {metrics}"
            );
        }
    }
}

/// WhatsApp, Meta-style batches, statuses shuffled within each message
/// (reads before deliveries), three campaigns, metrics and status
/// subscribers, open loop for about a second: every request is answered
/// 200, and each message ends at the furthest stage its lifecycle sent.
#[actix_web::test]
async fn a_shuffled_whatsapp_run_is_acknowledged_and_counted_exactly() {
    let app = spawn_app().await;
    let args = with(
        base(&app),
        &[
            "--messages",
            "40",
            "--campaigns",
            "3",
            "--order",
            "shuffled",
            "--per-request",
            "5",
            "--rate",
            "100",
            "--seconds",
            "1",
            "--concurrency",
            "8",
            "--subscribers",
            "3",
            "--status-subscribers",
            "2",
        ],
    );
    let summary = run::run(options(&args)).await.expect("the run completes");

    // Per 20 messages: 14 read, 4 delivered, 1 failed, 1 sent: 53 statuses.
    // 3 campaigns of 40: 318 statuses in 64 requests of 5 (the last of 3).
    assert_every_request_acknowledged(&summary, 64, 318, 318);
    assert_counters(
        &app,
        &summary,
        serde_json::json!({
            "total": 40, "sent": 40, "delivered": 36, "read": 28, "failed": 2,
            "clicked": 0, "complained": 0,
            "by_status": {"pending": 0, "sent": 2, "delivered": 8, "read": 28, "failed": 2},
        }),
    )
    .await;
    let check = summary.check.as_ref().unwrap();
    assert_eq!((check.campaigns, check.matched), (3, 3));

    // Every subscriber followed its campaign to the final version.
    assert_eq!(summary.sse.len(), 2);
    for fanout in &summary.sse {
        assert_eq!(fanout.reached_final, fanout.subscribers, "{fanout:?}");
        assert_eq!((fanout.lagged, fanout.ended_early), (0, 0), "{fanout:?}");
        assert!(fanout.events_min_per_subscriber > 0, "{fanout:?}");
    }
    let statuses = summary.sse.iter().find(|f| f.kind == "statuses").unwrap();
    assert_eq!(statuses.subscribers, 2);
    assert!(statuses.delay.count > 0, "status events were timed");
    let rss = summary.rss.as_ref().expect("--hub-pid reads the rss");
    assert!(rss.before_subscribers_kib > 0 && rss.end_of_load_kib > 0);
    assert!(rss.per_idle_subscriber_kib.is_some());
}

/// SES through SNS, signed with a key the hub trusts through its
/// `SNS_CERT_DIR`, every notification delivered twice (the second at a
/// random later point, with the same SNS `MessageId`): the hub applies each
/// once and counts the other as a duplicate; the run's certificate is gone
/// afterwards.
#[actix_web::test]
async fn a_duplicated_ses_run_is_acknowledged_and_counted_exactly() {
    let certs = tempfile::tempdir().unwrap();
    let cert_dir = certs.path().to_owned();
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(cert_dir)).await;
    let args = with(
        base(&app),
        &[
            "--channel",
            "ses",
            "--sns-cert-dir",
            certs.path().to_str().unwrap(),
            "--messages",
            "20",
            "--campaigns",
            "2",
            "--order",
            "duplicated",
            "--rate",
            "300",
            "--seconds",
            "1",
            "--concurrency",
            "8",
            "--subscribers",
            "2",
        ],
    );
    let summary = run::run(options(&args)).await.expect("the run completes");

    // Per 20 messages: 6 clicked, 8 opened, 3 delivered, 1 complained,
    // 1 bounced, 1 sent: 60 events; two campaigns, each event twice.
    assert_every_request_acknowledged(&summary, 240, 240, 120);
    assert_counters(
        &app,
        &summary,
        serde_json::json!({
            "total": 20, "sent": 20, "delivered": 18, "read": 14, "failed": 1,
            "clicked": 6, "complained": 1,
            "by_status": {"pending": 0, "sent": 1, "delivered": 4, "read": 14, "failed": 1},
        }),
    )
    .await;
    let ingest = summary.ingest.as_ref().unwrap();
    assert_eq!(
        ingest.signed_during_run, 0,
        "every notification was signed before"
    );
    assert!(summary.sse.iter().all(|f| f.reached_final == f.subscribers));
    let left: Vec<_> = std::fs::read_dir(certs.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the run's certificate is removed: {left:?}"
    );
}

/// A run the clock cuts short is still checked exactly: the counters are
/// what the statuses acknowledged so far make them. Shuffled, the first
/// part of the plan holds reads whose deliveries have not come yet, so the
/// implications (read ⇒ delivered ⇒ sent) decide the counters here.
#[actix_web::test]
async fn a_run_cut_short_is_counted_by_what_was_acknowledged() {
    let app = spawn_app().await;
    let args = with(
        base(&app),
        &[
            "--messages",
            "40",
            "--order",
            "shuffled",
            "--rate",
            "200",
            "--seconds",
            "0.3",
        ],
    );
    let summary = run::run(options(&args)).await.expect("the run completes");
    let ingest = summary.ingest.as_ref().unwrap();
    assert_eq!((ingest.requests, ingest.ok, ingest.errors), (60, 60, 0));
    assert_eq!(ingest.planned_requests, Some(106));
    assert!(!ingest.plan_complete);
    let check = summary.check.as_ref().unwrap();
    assert!(check.passed(), "{check:?}");
    assert!(summary.passed());

    // The same plan (same seed): some message's read is among the 60 sent
    // and its delivery is not.
    let plan = plan::Plan::new(
        options::Channel::Whatsapp,
        1,
        40,
        options::Order::Shuffled,
        1,
        11,
    );
    let sent: Vec<plan::Notification> = plan.plays[..60]
        .iter()
        .map(|&number| plan.notifications[number as usize])
        .collect();
    let read_first = sent.iter().any(|n| {
        n.stage == plan::Stage::Read
            && !sent
                .iter()
                .any(|d| d.index == n.index && d.stage == plan::Stage::Delivered)
    });
    assert!(read_first, "the cut leaves a read without its delivery");
    // So the hub counts more messages delivered than deliveries were sent.
    let deliveries = sent
        .iter()
        .filter(|n| n.stage == plan::Stage::Delivered)
        .count() as u64;
    let metrics = app.metrics(&plan::campaign_id(&summary.run, 0)).await;
    let delivered = metrics["delivered"].as_u64().unwrap();
    assert!(delivered > deliveries, "{deliveries}: {metrics}");
    assert_eq!(delivered, check.expected_total.delivered);
}

/// The smoke tests' criterion can fail: a hub that refuses every webhook
/// (another app secret) makes a run that did not pass, with the refusals
/// counted and the counters not claimed to match.
#[actix_web::test]
async fn a_run_the_hub_refuses_does_not_pass() {
    let app = spawn_app().await;
    let mut args = with(
        base(&app),
        &["--messages", "10", "--rate", "50", "--seconds", "0.2"],
    );
    let secret = args.iter().position(|arg| arg == WHATSAPP_SECRET).unwrap();
    args[secret] = "not-the-app-secret".to_owned();
    let summary = run::run(options(&args)).await.expect("the run completes");
    let ingest = summary.ingest.as_ref().unwrap();
    assert_eq!((ingest.requests, ingest.ok, ingest.errors), (10, 0, 10));
    assert_eq!(ingest.errors_by_kind.get("401"), Some(&10));
    assert!(summary.check.as_ref().unwrap().skipped.is_some());
    assert!(!summary.passed());
}

/// `--mode seed` registers and stops; `--mode ready` finds the hub ready.
#[actix_web::test]
async fn seed_registers_in_parallel_chunks_and_ready_reports_the_hubs_age() {
    let app = spawn_app().await;
    let args = with(
        base(&app),
        &[
            "--mode",
            "seed",
            "--messages",
            "250",
            "--campaigns",
            "8",
            "--register-chunk",
            "300",
            "--register-parallel",
            "3",
        ],
    );
    let summary = run::run(options(&args)).await.expect("the seed completes");
    let registration = summary.registration.as_ref().unwrap();
    assert_eq!(
        (registration.messages, registration.registered),
        (2_000, 2_000)
    );
    assert!(summary.ingest.is_none());
    for campaign in 0..8 {
        let metrics = app
            .metrics(&plan::campaign_id(&summary.run, campaign))
            .await;
        assert_eq!(metrics["total"], 250);
        assert_eq!(metrics["by_status"]["pending"], 250);
    }

    let args = with(base(&app), &["--mode", "ready"]);
    let summary = run::run(options(&args)).await.expect("the hub is ready");
    let ready = summary.ready.unwrap();
    assert!(ready.seconds_since_start >= 0.0);
    assert!(ready.rss_kib.is_some_and(|kib| kib > 0));
}
