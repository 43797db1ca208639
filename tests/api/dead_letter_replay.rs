//! Dead-letter replay: a signed payload the hub could not interpret is kept
//! with how it was verified; once the parsers know its shape, a replay runs
//! it through them and the hub's usual apply path, once (a second replay
//! changes nothing), records the outcome, and the letter leaves the open
//! list. Runs on the backend `STATUSHUB_TEST_BACKEND` names.
//!
//! "The parser learned the shape" is simulated honestly: a letter is stored
//! the way an older statushub would have stored a payload the current
//! parser reads (SQL written by the test, not statushub's code), with its
//! verification recorded.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// Stores a dead letter as an older statushub would have: `body` verbatim,
/// received `age_ms` ago, verified by `verification` (`None`: a row from
/// before verification was recorded). Returns its id.
pub(crate) async fn store_letter(
    app: &TestApp,
    body: &[u8],
    reason: &str,
    verification: Option<&str>,
    age_ms: i64,
) -> i64 {
    let blob = match &app.db {
        TestDb::Sqlite { .. } => format!("X'{}'", hex::encode(body)),
        TestDb::Postgres { .. } => format!("'\\x{}'::bytea", hex::encode(body)),
    };
    let verification = verification.map_or("NULL".to_owned(), |method| format!("'{method}'"));
    let received_at = statushub::clock::now_ms() - age_ms;
    let marker = format!("{reason} #{}", rand::random::<u32>());
    let statement = format!(
        "INSERT INTO dead_letters (channel, reason, content_type, body, received_at, verification)
         VALUES ('whatsapp', '{marker}', 'application/json', {blob}, {received_at}, {verification})"
    );
    app.db.tamper(&[&statement]).await;
    app.db
        .fetch(
            "SELECT id FROM dead_letters WHERE reason = $1",
            &[Bind::Text(marker)],
        )
        .await[0]["id"]
        .int()
}

/// `POST /webhooks/dead-letters/{id}/replay` as `token`.
async fn replay(app: &TestApp, id: i64, token: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/webhooks/dead-letters/{id}/replay")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Replays as the admin, asserting 200; returns the letter after.
async fn replay_ok(app: &TestApp, id: i64) -> Value {
    let response = replay(app, id, ADMIN_TOKEN).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// The ids listed with `?state=`.
async fn listed(app: &TestApp, state: Option<&str>) -> Vec<i64> {
    let query = state
        .map(|state| format!("&state={state}"))
        .unwrap_or_default();
    let response = app
        .get(
            &format!("/webhooks/dead-letters?limit=200{query}"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200);
    let letters: Vec<Value> = response.json().await.unwrap();
    letters.iter().map(|l| l["id"].as_i64().unwrap()).collect()
}

#[actix_web::test]
async fn a_payload_the_parser_now_reads_is_applied_once_and_leaves_the_open_list() {
    // Arrange: two registered messages, and a letter holding statuses for
    // them that an older parser could not read.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "replay", &["wamid.r1", "wamid.r2"])
        .await;
    let body = serde_json::to_vec(&whatsapp_payload(&[
        ("wamid.r1", "delivered", 1_700_000_000),
        ("wamid.r2", "read", 1_700_000_001),
    ]))
    .unwrap();
    let id = store_letter(&app, &body, "unknown shape", Some("hmac-sha256"), 0).await;
    let before = app.metrics("replay").await;
    assert_eq!(
        (before["delivered"].as_i64(), before["read"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        listed(&app, None).await,
        [id],
        "open is the default listing"
    );

    // Act
    let letter = replay_ok(&app, id).await;

    // Assert: applied through the hub, counters and statuses moved...
    assert_eq!(letter["state"], "replayed", "{letter}");
    let record = &letter["replay"];
    assert_eq!(record["outcome"], "applied", "{letter}");
    assert_eq!(record["error"], Value::Null);
    assert_eq!(
        (
            &record["received"],
            &record["applied"],
            &record["duplicates"],
            &record["unmatched"]
        ),
        (&json!(2), &json!(2), &json!(0), &json!(0))
    );
    assert_eq!(record["replays"], 1);
    assert_eq!(letter["verification"]["method"], "hmac-sha256");
    assert_eq!(app.message("whatsapp", "wamid.r2").await["status"], "read");
    let after = app.assert_counts_agree("replay").await;
    assert_eq!(
        (after["delivered"].as_i64(), after["read"].as_i64()),
        (Some(2), Some(1))
    );
    // ...and the letter left the open list.
    assert_eq!(listed(&app, None).await, Vec::<i64>::new());
    assert_eq!(listed(&app, Some("open")).await, Vec::<i64>::new());
    assert_eq!(listed(&app, Some("replayed")).await, [id]);
    assert_eq!(listed(&app, Some("all")).await, [id]);

    // A second replay changes nothing: every status is a duplicate.
    let again = replay_ok(&app, id).await;
    assert_eq!(again["replay"]["outcome"], "applied");
    assert_eq!(
        (&again["replay"]["applied"], &again["replay"]["duplicates"]),
        (&json!(0), &json!(2))
    );
    assert_eq!(again["replay"]["replays"], 2);
    assert_eq!(app.assert_counts_agree("replay").await, after);
    assert_eq!(
        app.message("whatsapp", "wamid.r2").await["timeline"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[actix_web::test]
async fn a_still_uninterpretable_letter_records_the_failure_and_stays_open() {
    // Arrange: a signed payload of a shape the parser rejects (a timestamp
    // that is no number) becomes a dead letter, verified by its signature;
    // one with a readable status beside it too.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "replay", &["wamid.ok"]).await;
    let bad = json!({"id": "wamid.bad", "status": "read", "timestamp": "soon"});
    let receipt: Value = app
        .post_whatsapp(&statushub::webhooks::whatsapp::envelope(vec![bad.clone()]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(receipt["dead_lettered"], 1, "{receipt}");
    let mixed = statushub::webhooks::whatsapp::envelope(vec![
        bad,
        whatsapp_status("wamid.ok", "delivered", 1_700_000_000, None),
    ]);
    let receipt: Value = app.post_whatsapp(&mixed).await.json().await.unwrap();
    assert_eq!(
        (&receipt["applied"], &receipt["dead_lettered"]),
        (&json!(1), &json!(1))
    );
    let open = listed(&app, None).await;
    let [mixed_id, bad_id] = open[..] else {
        panic!("expected two open letters, got {open:?}")
    };
    let letters: Vec<Value> = app
        .get("/webhooks/dead-letters", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    for letter in &letters {
        assert_eq!(letter["verification"]["method"], "hmac-sha256", "{letter}");
        assert_eq!(
            (&letter["state"], &letter["replay"]),
            (&json!("open"), &Value::Null)
        );
    }
    let counters = app.metrics("replay").await;

    // Act
    let failed = replay_ok(&app, bad_id).await;
    let partial = replay_ok(&app, mixed_id).await;

    // Assert: outcomes recorded with the parser's complaint, both open,
    // nothing changed.
    assert_eq!(failed["state"], "open");
    assert_eq!(failed["replay"]["outcome"], "failed", "{failed}");
    assert_eq!(failed["replay"]["received"], 0);
    assert!(
        failed["replay"]["error"].as_str().unwrap().contains("soon"),
        "{failed}"
    );
    assert_eq!(partial["state"], "open");
    assert_eq!(partial["replay"]["outcome"], "partial", "{partial}");
    assert_eq!(
        (
            &partial["replay"]["received"],
            &partial["replay"]["duplicates"]
        ),
        (&json!(1), &json!(1))
    );
    assert_eq!(listed(&app, None).await, [mixed_id, bad_id]);
    assert_eq!(listed(&app, Some("replayed")).await, Vec::<i64>::new());
    assert_eq!(app.assert_counts_agree("replay").await, counters);
    let shown: Vec<Value> = app
        .get("/webhooks/dead-letters?state=all", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        shown.iter().all(|l| l["replay"]["replays"] == 1),
        "{shown:?}"
    );
}

#[actix_web::test]
async fn replay_refuses_unknown_ids_other_callers_and_letters_nobody_verified() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "replay", &["wamid.u1"]).await;
    let body =
        serde_json::to_vec(&whatsapp_payload(&[("wamid.u1", "read", 1_700_000_000)])).unwrap();
    let verified = store_letter(&app, &body, "old", Some("hmac-sha256"), 0).await;
    let unverified = store_letter(&app, &body, "old", Some("disabled"), 0).await;
    let legacy = store_letter(&app, &body, "old", None, 0).await;

    assert_eq!(replay(&app, 999_999, ADMIN_TOKEN).await.status(), 404);
    let tenant = app.tenant_token("t1", None);
    assert_eq!(replay(&app, verified, &tenant).await.status(), 403);
    assert_eq!(replay(&app, verified, "wrong").await.status(), 401);
    assert_eq!(
        app.get("/webhooks/dead-letters?state=closed", ADMIN_TOKEN)
            .await
            .status(),
        400
    );
    // With verification on, only a letter whose signature was verified at
    // receipt is replayed.
    for id in [unverified, legacy] {
        let response = replay(&app, id, ADMIN_TOKEN).await;
        assert_eq!(response.status(), 409);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("verification"),
            "{error}"
        );
    }
    assert_eq!(app.metrics("replay").await["read"], 0);
    let listed_letters: Vec<Value> = app
        .get("/webhooks/dead-letters", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    let methods: Vec<&str> = listed_letters
        .iter()
        .map(|l| l["verification"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["unknown", "disabled", "hmac-sha256"]);
    assert_eq!(
        replay_ok(&app, verified).await["replay"]["outcome"],
        "applied"
    );
    assert_eq!(app.metrics("replay").await["read"], 1);
}

#[actix_web::test]
async fn without_verification_unsigned_parts_are_kept_as_such_and_replayable() {
    // With verification off, the unreadable part of a partly readable
    // payload is still dead-lettered: recorded as unverified.
    let app = spawn_app_with(|settings| settings.enable_webhook_verification = false).await;
    app.register_whatsapp("t1", "replay", &["wamid.n1"]).await;
    let mixed = statushub::webhooks::whatsapp::envelope(vec![
        json!({"id": "wamid.n2", "status": "read", "timestamp": "soon"}),
        whatsapp_status("wamid.n1", "sent", 1_700_000_000, None),
    ]);
    let receipt: Value = app
        .post_whatsapp_raw(serde_json::to_vec(&mixed).unwrap(), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(receipt["dead_lettered"], 1, "{receipt}");
    let letters: Vec<Value> = app
        .get("/webhooks/dead-letters", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(letters[0]["verification"]["method"], "disabled");

    // Verification is off now too: the replay grants nothing a webhook
    // would not, so it runs.
    let body = serde_json::to_vec(&whatsapp_payload(&[(
        "wamid.n1",
        "delivered",
        1_700_000_001,
    )]))
    .unwrap();
    let id = store_letter(&app, &body, "old", Some("disabled"), 0).await;
    assert_eq!(replay_ok(&app, id).await["replay"]["outcome"], "applied");
    assert_eq!(
        app.message("whatsapp", "wamid.n1").await["status"],
        "delivered"
    );
}

/// Runs `statushub replay-dead-letters` against `app` with `args`.
async fn replay_command(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("replay-dead-letters")
        .args(["--url", &app.address])
        .args(args)
        .env("STATUSHUB_DATA_DIR", data_dir.path())
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("replay-dead-letters did not finish within 60 s")
        .expect("failed to run statushub replay-dead-letters");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn the_command_replays_the_open_letters_matching_since_and_reason_through_the_hub() {
    // Arrange: three readable letters: an old one, a recent one with
    // another reason, and a recent one to replay.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "replay", &["wamid.c1", "wamid.c2", "wamid.c3"])
        .await;
    let payload = |id: &str| {
        serde_json::to_vec(&whatsapp_payload(&[(id, "delivered", 1_700_000_000)])).unwrap()
    };
    let day = 86_400_000;
    let old = store_letter(
        &app,
        &payload("wamid.c1"),
        "new field x",
        Some("hmac-sha256"),
        3 * day,
    )
    .await;
    let other = store_letter(
        &app,
        &payload("wamid.c2"),
        "other reason",
        Some("hmac-sha256"),
        0,
    )
    .await;
    let target = store_letter(
        &app,
        &payload("wamid.c3"),
        "new field x",
        Some("hmac-sha256"),
        0,
    )
    .await;

    // Act: a bound in the future selects nothing; then the recent letters
    // with the reason.
    let (ok, stdout, stderr) = replay_command(&app, &["--since", "2999-01-01T00:00:00Z"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("replayed 0 dead letters"), "{stdout}");
    let (ok, stdout, stderr) =
        replay_command(&app, &["--since", "24h", "--reason", "new field"]).await;

    // Assert
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("dead letter {target} ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("replayed 1 dead letters: 1 applied, 0 partial, 0 failed"),
        "{stdout}"
    );
    let mut open = listed(&app, None).await;
    open.sort_unstable();
    assert_eq!(open, [old, other]);
    assert_eq!(listed(&app, Some("replayed")).await, [target]);
    assert_eq!(
        app.message("whatsapp", "wamid.c3").await["status"],
        "delivered"
    );
    assert_eq!(
        app.message("whatsapp", "wamid.c1").await["status"],
        "pending"
    );
    app.assert_counts_agree("replay").await;

    // A wrong token fails the command.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_statushub"))
        .args(["replay-dead-letters", "--url", &app.address])
        .env("STATUSHUB_ADMIN_TOKEN", "not-the-admin-token")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
