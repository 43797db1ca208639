//! `statushub simulate` against a real hub: the binary registers a campaign,
//! plays signed webhooks (WhatsApp, and SES through SNS with the key and
//! certificate it keeps in the hub's `SNS_CERT_DIR`), and the live counters
//! end equal to a SQL recount.

use std::process::Output;
use std::time::Duration;

use crate::helpers::*;

/// Runs `statushub simulate` with `args` and the hub's secrets in the
/// environment (and an empty data directory, so no stray secrets file is read;
/// no SNS settings but those in `args`).
async fn simulate(app: &TestApp, admin_token: &str, args: &[&str]) -> Output {
    let data_dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("simulate")
        .args(["--url", &app.address])
        .args(args)
        .env("STATUSHUB_DATA_DIR", data_dir.path())
        .env("STATUSHUB_ADMIN_TOKEN", admin_token)
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
        .env_remove("SNS_CERT_DIR")
        .env_remove("SES_WEBHOOK_SECRET")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("simulate did not finish within 120 s")
        .expect("failed to run statushub simulate")
}

#[actix_web::test]
async fn simulate_moves_a_campaign_whose_counters_match_sql() {
    let app = spawn_app().await;

    let output = simulate(
        &app,
        ADMIN_TOKEN,
        &[
            "--messages",
            "20",
            "--rate",
            "1000",
            "--campaign",
            "sim-test",
            "--seed",
            "7",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("registered 20 messages"), "{stdout}");
    assert!(stdout.contains("campaign sim-test: total 20"), "{stdout}");

    let metrics = app.metrics("sim-test").await;
    assert_eq!(metrics["tenant_id"], "demo");
    assert_eq!(metrics["total"], 20);
    for field in ["sent", "delivered", "read"] {
        assert!(metrics[field].as_u64().unwrap() > 0, "{field}: {metrics}");
    }
    assert!(metrics["version"].as_u64().unwrap() > 0, "{metrics}");
    assert_eq!(
        counts_only(&metrics),
        app.sql_counts("sim-test").await,
        "live counters equal a SQL recount"
    );
    // Every message got at least one status: nothing is left pending.
    assert_eq!(metrics["by_status"]["pending"], 0, "{metrics}");
}

#[actix_web::test]
async fn simulate_with_a_wrong_admin_token_fails_clearly() {
    let app = spawn_app().await;

    let output = simulate(&app, "not-the-admin-token", &["--messages", "3"]).await;

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the admin token"), "{stderr}");
}

/// Asserts the campaign has `total` messages, moved through sent, delivered
/// and read, and its live counters equal a SQL recount; returns them.
async fn assert_moved(app: &TestApp, campaign: &str, total: u64) -> serde_json::Value {
    let metrics = app.metrics(campaign).await;
    assert_eq!(metrics["tenant_id"], "demo");
    assert_eq!(metrics["total"], total, "{campaign}: {metrics}");
    for field in ["sent", "delivered", "read"] {
        assert!(
            metrics[field].as_u64().unwrap() > 0,
            "{campaign} {field}: {metrics}"
        );
    }
    assert_eq!(
        counts_only(&metrics),
        app.sql_counts(campaign).await,
        "{campaign}: live counters equal a SQL recount"
    );
    assert_eq!(metrics["by_status"]["pending"], 0, "{metrics}");
    metrics
}

#[actix_web::test]
async fn simulate_plays_ses_events_a_hub_with_the_same_cert_dir_verifies() {
    let certs = tempfile::tempdir().unwrap();
    // Not created yet: simulate makes it, with its key and certificate.
    let cert_dir = certs.path().join("sns-certs");
    let hub_cert_dir = cert_dir.clone();
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(hub_cert_dir)).await;
    let cert_dir_arg = cert_dir.to_str().unwrap();

    let output = simulate(
        &app,
        ADMIN_TOKEN,
        &[
            "--channel",
            "both",
            "--sns-cert-dir",
            cert_dir_arg,
            "--messages",
            "30",
            "--rate",
            "1000",
            "--campaign",
            "sim-both",
            "--seed",
            "11",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("made an sns signing certificate"),
        "{stdout}"
    );
    assert!(
        stdout.contains("campaign sim-both-whatsapp: total 30"),
        "{stdout}"
    );
    assert!(
        stdout.contains("campaign sim-both-email: total 30"),
        "{stdout}"
    );
    let cert = std::fs::read(cert_dir.join(statushub::simulate::SNS_CERT_NAME)).unwrap();
    let key = cert_dir.join(statushub::simulate::SNS_KEY_NAME);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    assert_moved(&app, "sim-both-whatsapp", 30).await;
    let email = assert_moved(&app, "sim-both-email", 30).await;
    assert!(email["clicked"].as_u64().unwrap() > 0, "{email}");
    // Every email event was applied or a duplicate: none refused, lost or
    // left unmatched.
    assert_eq!(app.count_rows("dead_letters").await, 0);
    assert_eq!(app.count_rows("unmatched_statuses").await, 0);

    // A second run reuses the key and certificate the running hub loaded.
    let output = simulate(
        &app,
        ADMIN_TOKEN,
        &[
            "--channel",
            "email",
            "--sns-cert-dir",
            cert_dir_arg,
            "--messages",
            "10",
            "--rate",
            "1000",
            "--campaign",
            "sim-email",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("signing sns messages with"), "{stdout}");
    assert_eq!(
        std::fs::read(cert_dir.join(statushub::simulate::SNS_CERT_NAME)).unwrap(),
        cert
    );
    assert_moved(&app, "sim-email", 10).await;
}

#[actix_web::test]
async fn simulate_email_without_a_cert_dir_fails_clearly() {
    let app = spawn_app().await;

    let output = simulate(
        &app,
        ADMIN_TOKEN,
        &["--channel", "email", "--messages", "3"],
    )
    .await;

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("start the hub with SNS_CERT_DIR"),
        "{stderr}"
    );
    assert!(stderr.contains("--sns-cert-dir"), "{stderr}");
    // Nothing was registered.
    assert_eq!(app.count_rows("messages").await, 0);
}

#[actix_web::test]
async fn simulate_email_sends_the_hubs_ses_secret_and_says_when_refused() {
    let certs = tempfile::tempdir().unwrap();
    let hub_cert_dir = certs.path().to_owned();
    let app = spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(hub_cert_dir);
        settings.ses_webhook_secret = Some(secrecy::SecretString::from("hub-ses-secret"));
    })
    .await;
    let cert_dir = certs.path().to_str().unwrap();
    let args = |campaign: &'static str| {
        [
            "--channel",
            "email",
            "--sns-cert-dir",
            cert_dir,
            "--messages",
            "5",
            "--rate",
            "1000",
            "--campaign",
            campaign,
            "--seed",
            "5",
        ]
    };

    let output = simulate(&app, ADMIN_TOKEN, &args("sim-no-secret")).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the sns message (401"), "{stderr}");
    assert!(stderr.contains("SES_WEBHOOK_SECRET"), "{stderr}");

    let mut with_secret = args("sim-secret").to_vec();
    with_secret.extend(["--ses-webhook-secret", "hub-ses-secret"]);
    let output = simulate(&app, ADMIN_TOKEN, &with_secret).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "simulate failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_moved(&app, "sim-secret", 5).await;
}
