//! WhatsApp webhooks end to end: verification, signatures, statuses,
//! idempotency, order independence.

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn verification_echoes_the_challenge_for_the_right_token() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url(&format!(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        )))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.unwrap(), "1158201444");
}

#[actix_web::test]
async fn verification_with_a_wrong_token_or_mode_is_forbidden() {
    let app = spawn_app().await;

    for query in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=test-verify-token&hub.challenge=1",
        "hub.mode=subscribe&hub.challenge=1",
        "",
    ] {
        let response = app
            .client
            .get(app.url(&format!("/webhooks/whatsapp?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{query}");
    }
}

#[actix_web::test]
async fn signed_payload_with_several_statuses_moves_counters_and_timeline() {
    // Arrange
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b", "wamid.c", "wamid.d"])
        .await;

    // Act: one call, several statuses, including a failure and read-before-delivered.
    let receipt = app
        .send_statuses(&[
            ("wamid.a", "sent", 1_700_000_000),
            ("wamid.a", "delivered", 1_700_000_010),
            ("wamid.b", "read", 1_700_000_020),
            ("wamid.b", "delivered", 1_700_000_015),
            ("wamid.c", "failed", 1_700_000_030),
        ])
        .await;

    // Assert
    assert_eq!(
        receipt,
        json!({"received": 5, "applied": 5, "duplicates": 0, "unmatched": 0, "dead_lettered": 0})
    );
    let metrics = app.metrics("c1").await;
    assert_eq!(
        counts_only(&metrics),
        json!({"total": 4, "sent": 2, "delivered": 2, "read": 1, "failed": 1, "clicked": 0, "complained": 0,
               "by_status": {"pending": 1, "sent": 0, "delivered": 1, "read": 1, "failed": 1}})
    );
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
    assert_eq!(metrics["tenant_id"], "t1");
    assert!(metrics["version"].as_i64().unwrap() >= 5);

    let message = app.message("whatsapp", "wamid.b").await;
    assert_eq!(message["status"], "read");
    let timeline: Vec<&str> = message["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        timeline,
        ["delivered", "read"],
        "timeline is ordered by provider time"
    );
    let failed = app.message("whatsapp", "wamid.c").await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"code": "131026", "title": "Message undeliverable"})
    );
}

#[actix_web::test]
async fn bad_or_missing_signature_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a"]).await;
    let body =
        serde_json::to_vec(&whatsapp_payload(&[("wamid.a", "read", 1_700_000_000)])).unwrap();
    let forged = statushub::webhooks::whatsapp::signature::sign(b"not-the-secret", &body);

    let cases = [
        None,
        Some(forged),
        Some("sha256=zz".to_owned()),
        Some("sha1=abcdef".to_owned()),
        Some(String::new()),
    ];
    for header in cases {
        let response = app.post_whatsapp_raw(body.clone(), header.clone()).await;
        assert_eq!(response.status(), 401, "{header:?}");
    }
    // A valid signature over different bytes is refused too.
    let mut tampered = body.clone();
    let signature =
        statushub::webhooks::whatsapp::signature::sign(WHATSAPP_SECRET.as_bytes(), &body);
    tampered.push(b' ');
    assert_eq!(
        app.post_whatsapp_raw(tampered, Some(signature))
            .await
            .status(),
        401
    );

    assert_eq!(app.count_rows("status_events").await, 0);
    assert_eq!(app.count_rows("unmatched_statuses").await, 0);
    assert_eq!(app.count_rows("dead_letters").await, 0);
    assert_eq!(app.metrics("c1").await["sent"], 0);
}

#[actix_web::test]
async fn the_same_payload_twice_changes_nothing_the_second_time() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b"])
        .await;
    let payload = whatsapp_payload(&[
        ("wamid.a", "delivered", 1_700_000_000),
        ("wamid.b", "read", 1_700_000_001),
    ]);

    let first: serde_json::Value = app.post_whatsapp(&payload).await.json().await.unwrap();
    let metrics_after_first = app.metrics("c1").await;
    let second: serde_json::Value = app.post_whatsapp(&payload).await.json().await.unwrap();

    assert_eq!(first["applied"], 2);
    assert_eq!(
        second,
        json!({"received": 2, "applied": 0, "duplicates": 2, "unmatched": 0, "dead_lettered": 0})
    );
    assert_eq!(
        app.metrics("c1").await,
        metrics_after_first,
        "counters and version unchanged"
    );
    assert_eq!(
        app.count_rows("status_events").await,
        2,
        "one event row per notification"
    );
}

#[actix_web::test]
async fn shuffled_duplicated_concurrent_delivery_ends_like_sequential_delivery() {
    // Arrange: two hubs, the same events; one gets them in order, one
    // shuffled, duplicated and concurrently.
    let ids: Vec<String> = (0..200).map(|i| format!("wamid.{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let statuses = ["sent", "delivered", "read", "failed", "played", "deleted"];
    let mut events = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        // A deterministic mix: each message gets 1 to 4 distinct statuses.
        for (k, status) in statuses.iter().enumerate() {
            if (index * 7 + k * 3) % 5 < 2 || k == index % 6 {
                events.push((
                    id.as_str(),
                    *status,
                    1_700_000_000 + (index * 10 + k) as i64,
                ));
            }
        }
    }
    let sequential = spawn_app().await;
    sequential.register_whatsapp("t1", "c1", &id_refs).await;
    for event in &events {
        sequential.send_statuses(&[*event]).await;
    }

    let concurrent = spawn_app().await;
    concurrent.register_whatsapp("t1", "c1", &id_refs).await;
    let mut shuffled: Vec<_> = events
        .iter()
        .chain(events.iter().step_by(3))
        .copied()
        .collect();
    let mut seed: u64 = 42;
    for i in (1..shuffled.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        shuffled.swap(i, (seed >> 33) as usize % (i + 1));
    }

    // Act: 3 statuses per call; every run of 16 calls is sent one call after
    // another, and all runs at once (one call in flight per run).
    let batches: Vec<Vec<WaStatus<'_>>> = shuffled.chunks(3).map(<[_]>::to_vec).collect();
    let receipts = futures_util::future::join_all(batches.chunks(16).map(|group| {
        let concurrent = &concurrent;
        async move {
            let mut receipts = Vec::new();
            for batch in group {
                receipts.push(concurrent.send_statuses(batch).await);
            }
            receipts
        }
    }))
    .await;

    // Assert
    let total_applied: i64 = receipts
        .iter()
        .flatten()
        .map(|r| r["applied"].as_i64().unwrap())
        .sum();
    let total_duplicates: i64 = receipts
        .iter()
        .flatten()
        .map(|r| r["duplicates"].as_i64().unwrap())
        .sum();
    assert_eq!(total_applied as usize, events.len());
    assert_eq!(total_applied + total_duplicates, shuffled.len() as i64);
    let expected = counts_only(&sequential.metrics("c1").await);
    assert_eq!(counts_only(&concurrent.metrics("c1").await), expected);
    assert_eq!(concurrent.sql_counts("c1").await, expected);
    assert_eq!(sequential.sql_counts("c1").await, expected);
    for id in ids.iter().step_by(17) {
        let a = sequential.message("whatsapp", id).await;
        let b = concurrent.message("whatsapp", id).await;
        assert_eq!(a["status"], b["status"], "{id}");
        assert_eq!(a["seen"], b["seen"], "{id}");
    }
}

#[actix_web::test]
async fn unknown_message_statuses_are_buffered_then_applied_on_registration() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.known"]).await;

    let receipt = app
        .send_statuses(&[
            ("wamid.later", "delivered", 1_700_000_000),
            ("wamid.later", "read", 1_700_000_005),
        ])
        .await;
    assert_eq!(receipt["unmatched"], 2);
    assert_eq!(app.metrics("c1").await["delivered"], 0);
    // A redelivery while buffered is a duplicate, not a second buffered row.
    let again = app
        .send_statuses(&[("wamid.later", "read", 1_700_000_005)])
        .await;
    assert_eq!(again["duplicates"], 1);
    assert_eq!(app.count_rows("unmatched_statuses").await, 2);

    let registered = app.register_whatsapp("t1", "c1", &["wamid.later"]).await;

    assert_eq!(registered["registered"], 1);
    assert_eq!(registered["applied_buffered"], 2);
    let metrics = app.metrics("c1").await;
    assert_eq!(metrics["total"], 2);
    assert_eq!(metrics["read"], 1);
    assert_eq!(metrics["by_status"]["read"], 1);
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
    assert_eq!(app.count_rows("unmatched_statuses").await, 0);
    assert_eq!(
        app.message("whatsapp", "wamid.later").await["timeline"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // After registration, the same notification is a duplicate.
    assert_eq!(
        app.send_statuses(&[("wamid.later", "read", 1_700_000_005)])
            .await["duplicates"],
        1
    );
}

#[actix_web::test]
async fn captured_meta_payloads_parse_and_apply() {
    let dir = vectors_dir("whatsapp");
    let app = spawn_app().await;
    app.register_whatsapp("t1", "vectors", &["wamid.xyzxyz", "<WHATSAPP_MESSAGE_ID>"])
        .await;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the pywa captures in {}",
        dir.display()
    );

    for file in &files {
        let body = std::fs::read(file).unwrap();
        let response = app.post_whatsapp_bytes(body).await;
        assert_eq!(response.status(), 200, "{}", file.display());
        let receipt: serde_json::Value = response.json().await.unwrap();
        assert_eq!(receipt["received"], 1, "{}", file.display());
        assert_eq!(receipt["dead_lettered"], 0, "{}", file.display());
        assert_eq!(receipt["unmatched"], 0, "{}", file.display());
    }

    let message = app.message("whatsapp", "wamid.xyzxyz").await;
    // sent, delivered, read, played and failed were all seen: read wins.
    assert_eq!(message["status"], "read");
    assert_eq!(message["error"]["code"], "130472");
    let group = app.message("whatsapp", "<WHATSAPP_MESSAGE_ID>").await;
    assert_eq!(group["status"], "read");
    let metrics = app.metrics("vectors").await;
    assert_eq!(counts_only(&metrics), app.sql_counts("vectors").await);
    assert_eq!(metrics["read"], 2);
}

/// Returns a message view's `seen` as `{status: first_at}`.
fn first_times(message: &serde_json::Value) -> serde_json::Value {
    message["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seen| {
            (
                seen["status"].as_str().unwrap().to_owned(),
                seen["first_at"].clone(),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Each seen status shows its first provider timestamp, whatever order the
/// events arrive in; a status only implied by a later one has none.
#[actix_web::test]
async fn message_views_show_the_first_provider_time_of_each_status() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.early", "wamid.late"])
        .await;

    // `read` implies `delivered` and `sent`, whose times are unknown.
    app.send_statuses(&[("wamid.early", "read", 1_700_000_100)])
        .await;
    assert_eq!(
        first_times(&app.message("whatsapp", "wamid.early").await),
        json!({"sent": null, "delivered": null, "read": "2023-11-14T22:15:00.000Z"})
    );
    // An implied status seen later gets its time.
    app.send_statuses(&[("wamid.early", "delivered", 1_700_000_050)])
        .await;
    // A later event with an earlier time (`played` counts as read) moves
    // `read` back to it.
    app.send_statuses(&[("wamid.early", "played", 1_700_000_020)])
        .await;
    let early = app.message("whatsapp", "wamid.early").await;
    assert_eq!(
        first_times(&early),
        json!({"sent": null, "delivered": "2023-11-14T22:14:10.000Z", "read": "2023-11-14T22:13:40.000Z"})
    );
    assert_eq!(early["status"], "read");

    // The same two events the other way round: the later time does not
    // replace the earlier one.
    app.send_statuses(&[("wamid.late", "played", 1_700_000_020)])
        .await;
    app.send_statuses(&[("wamid.late", "read", 1_700_000_100)])
        .await;
    assert_eq!(
        first_times(&app.message("whatsapp", "wamid.late").await),
        json!({"sent": null, "delivered": null, "read": "2023-11-14T22:13:40.000Z"})
    );
}

/// A status buffered for an unknown message id expires after the unmatched
/// retention: its row goes, and registering the id later applies nothing.
#[actix_web::test]
async fn buffered_statuses_for_unknown_messages_expire() {
    let app = spawn_app_with(|settings| {
        settings.retention.unmatched = std::time::Duration::from_secs(1);
        settings.retention.interval = std::time::Duration::from_millis(200);
    })
    .await;
    let receipt = app
        .send_statuses(&[("wamid.ghost", "delivered", 1_700_000_000)])
        .await;
    assert_eq!(receipt["unmatched"], 1);

    // Hang guard only: the retention pass runs every 200 ms.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count_rows("unmatched_statuses").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the buffered status never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let registered = app.register_whatsapp("t1", "c1", &["wamid.ghost"]).await;

    assert_eq!(registered["registered"], 1);
    assert_eq!(registered["applied_buffered"], 0);
    let message = app.message("whatsapp", "wamid.ghost").await;
    assert_eq!(message["status"], "pending");
    assert_eq!(message["timeline"], json!([]));
    let metrics = app.metrics("c1").await;
    assert_eq!(metrics["by_status"]["pending"], 1);
    assert_eq!(metrics["delivered"], 0);
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}
