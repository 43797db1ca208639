//! The harness itself: the settings test hubs run with, and the checks the
//! other tests lean on, each shown to fail on the data it must refuse (a
//! check that cannot fail proves nothing).

use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::Duration;

use clap::Args as _;
use futures_util::FutureExt as _;
use serde_json::json;

use crate::helpers::*;

/// The environment variables `statushub serve` reads.
fn serve_variables() -> Vec<String> {
    statushub::config::ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn no_argument_of_the_test_command_reads_the_environment() {
    let variables = serve_variables();
    assert!(
        variables.iter().any(|name| name == "DATABASE_URL") && variables.len() >= 20,
        "serve reads {variables:?}"
    );

    assert!(
        env_free_serve_command()
            .get_arguments()
            .all(|arg| arg.get_env().is_none())
    );
}

#[test]
fn test_settings_are_the_serve_defaults() {
    let dir = tempfile::tempdir().unwrap();

    let settings = test_settings(dir.path());

    // What tests override.
    assert_eq!(settings.bind.to_string(), "127.0.0.1:0");
    assert_eq!(
        settings.database_url,
        format!("sqlite://{}", dir.path().join("statushub.db").display())
    );
    assert_eq!(settings.data_dir, dir.path().join("data"));
    assert_eq!(settings.workers, Some(2));
    // The rest is what `statushub serve` runs with by default (README).
    assert_eq!(
        settings.sqlite_synchronous,
        statushub::config::SqliteSynchronous::Full
    );
    assert!(settings.enable_webhook_verification);
    assert!(settings.ses_webhook_secret.is_none());
    assert!(settings.sns_topic_arns.is_empty());
    assert!(settings.sns_cert_dir.is_none());
    assert!(settings.sns_subscribe_override.is_none());
    assert_eq!(
        (settings.body_limit, settings.api_body_limit),
        (1024 * 1024, 64 * 1024 * 1024)
    );
    assert_eq!((settings.max_batch, settings.max_queue), (2_000, 50_000));
    assert_eq!(settings.campaign_idle, Duration::from_secs(300));
    assert_eq!(settings.sse_coalesce, Duration::from_millis(100));
    assert_eq!(settings.sse_heartbeat, Duration::from_secs(15));
    assert_eq!(settings.sse_replay_limit, 1000);
    assert_eq!(settings.request_timeout, Duration::from_secs(30));
    assert_eq!(settings.max_connections, 16_384);
    assert_eq!(
        (
            settings.stream_limits.total,
            settings.stream_limits.per_tenant,
            settings.stream_limits.per_token
        ),
        (15_000, 1_000, 20)
    );
    let day = 86_400;
    assert_eq!(
        settings.retention.events,
        Some(Duration::from_secs(90 * day))
    );
    assert_eq!(
        settings.retention.dead_letters,
        Some(Duration::from_secs(30 * day))
    );
    assert_eq!(settings.retention.unmatched, Duration::from_secs(7 * day));
    assert_eq!(settings.retention.interval, Duration::from_secs(600));
}

#[test]
fn test_settings_ignore_every_variable_serve_reads() {
    // The test above again, in a child process whose environment sets every
    // variable `serve` reads to a value that is not its default.
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.args([
        "--exact",
        "harness::test_settings_are_the_serve_defaults",
        "--test-threads=1",
    ]);
    for name in serve_variables() {
        child.env(name, "7");
    }

    let output = child.output().unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[actix_web::test]
async fn the_recount_derives_current_status_from_seen_with_the_spec_precedence() {
    // Arrange: rows written by the test, not by statushub, one per mask,
    // each with the timestamps that explain it and the status it must have.
    let app = spawn_app().await;
    let rows = [
        (0, "pending", &[][..]),
        (1, "sent", &["sent_at"][..]),
        (3, "delivered", &["delivered_at"][..]),
        (7, "read", &["read_at"][..]),
        (15, "read", &["clicked_at"][..]),
        (19, "delivered", &["complained_at"][..]),
        (32, "failed", &["failed_at"][..]),
        (33, "failed", &["sent_at", "failed_at"][..]),
        (35, "delivered", &["delivered_at", "failed_at"][..]),
        (39, "read", &["read_at", "failed_at"][..]),
    ];
    let ids: Vec<String> = (0..rows.len()).map(|i| format!("wamid.mask{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let statements: Vec<String> = rows
        .iter()
        .zip(&ids)
        .map(|((seen, status, stamps), id)| {
            let stamps: String = stamps.iter().map(|column| format!(", {column} = 1")).collect();
            format!(
                "UPDATE messages SET seen = {seen}, status = '{status}'{stamps} WHERE provider_message_id = '{id}'"
            )
        })
        .collect();
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    app.db.tamper(&statements).await;

    // Act
    let recount = app.db.recount("c1").await;

    // Assert: the counts the spec gives for these rows, worked out by hand.
    assert_eq!(recount.broken, Vec::<String>::new());
    assert_eq!(
        recount.counts,
        json!({"total": 10, "sent": 8, "delivered": 6, "read": 3, "failed": 2, "clicked": 1, "complained": 1,
               "by_status": {"pending": 1, "sent": 1, "delivered": 3, "read": 3, "failed": 2}})
    );
    assert_eq!(recount.stored_by_status, recount.counts["by_status"]);
}

#[actix_web::test]
async fn the_recount_catches_rows_and_counters_that_break_the_invariants() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b"])
        .await;
    app.send_statuses(&[
        ("wamid.a", "read", 1_700_000_000),
        ("wamid.b", "sent", 1_700_000_000),
    ])
    .await;
    app.assert_counts_agree("c1").await;
    let corruptions = [
        (
            "a stored status other than the one derived from seen",
            "UPDATE messages SET status = 'delivered' WHERE provider_message_id = 'wamid.a'",
            "UPDATE messages SET status = 'read' WHERE provider_message_id = 'wamid.a'",
        ),
        (
            "a seen mask not closed under the implications (read without delivered)",
            "UPDATE messages SET seen = 5 WHERE provider_message_id = 'wamid.a'",
            "UPDATE messages SET seen = 7 WHERE provider_message_id = 'wamid.a'",
        ),
        (
            "a status seen without a provider reporting it (failed, no timestamp)",
            "UPDATE messages SET seen = 39 WHERE provider_message_id = 'wamid.a'",
            "UPDATE messages SET seen = 7 WHERE provider_message_id = 'wamid.a'",
        ),
        (
            "a first timestamp of a status never seen",
            "UPDATE messages SET complained_at = 1 WHERE provider_message_id = 'wamid.b'",
            "UPDATE messages SET complained_at = NULL WHERE provider_message_id = 'wamid.b'",
        ),
        (
            "a stored counter off by one",
            "UPDATE campaign_counters SET delivered = delivered + 1",
            "UPDATE campaign_counters SET delivered = delivered - 1",
        ),
        (
            "a stored current-status counter off by one",
            "UPDATE campaign_counters SET now_sent = now_sent + 1",
            "UPDATE campaign_counters SET now_sent = now_sent - 1",
        ),
    ];
    for (what, corrupt, repair) in corruptions {
        app.db.tamper(&[corrupt]).await;
        let recount = app.db.recount("c1").await;
        let caught = std::panic::catch_unwind(move || recount.checked("c1")).is_err();
        assert!(caught, "the recount missed {what}");
        app.db.tamper(&[repair]).await;
        app.assert_counts_agree("c1").await;
    }

    // A change the hub did not make, written consistently (row and stored
    // counters agree): only the live counters can tell, and they do.
    app.db
        .tamper(&[
            "UPDATE messages SET seen = 3, status = 'delivered', delivered_at = 1 WHERE provider_message_id = 'wamid.b'",
            "UPDATE campaign_counters SET delivered = delivered + 1, now_sent = now_sent - 1, now_delivered = now_delivered + 1",
        ])
        .await;
    let recount = app.db.recount("c1").await;
    recount.checked("c1");
    let caught = AssertUnwindSafe(app.assert_counts_agree("c1"))
        .catch_unwind()
        .await
        .is_err();
    assert!(
        caught,
        "the live counters were not compared with the recount"
    );
}
