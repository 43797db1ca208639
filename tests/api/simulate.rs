//! `statushub simulate` against a real hub: the binary registers a campaign,
//! plays signed webhooks, and the live counters end equal to a SQL recount.

use std::process::Output;
use std::time::Duration;

use crate::helpers::*;

/// Runs `statushub simulate` with `args` and the hub's secrets in the
/// environment (and an empty data directory, so no stray secrets file is read).
async fn simulate(app: &TestApp, admin_token: &str, args: &[&str]) -> Output {
    let data_dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("simulate")
        .args(["--url", &app.address])
        .args(args)
        .env("STATUSHUB_DATA_DIR", data_dir.path())
        .env("STATUSHUB_ADMIN_TOKEN", admin_token)
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
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
