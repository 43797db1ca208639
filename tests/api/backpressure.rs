//! When the store cannot take more, webhooks get 503 with `Retry-After`
//! (providers retry) and nothing is half-stored.

use crate::helpers::*;

#[actix_web::test]
async fn a_full_write_queue_answers_503_with_retry_after() {
    // Arrange: a queue that holds a single row.
    let app = spawn_app_with(|settings| {
        settings.max_batch = 1;
        settings.max_queue = 1;
    })
    .await;
    let ids: Vec<String> = (0..64).map(|i| format!("wamid.q{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;

    // Act: 64 concurrent calls.
    let payloads: Vec<serde_json::Value> = refs
        .iter()
        .map(|id| whatsapp_payload(&[(id, "delivered", 1_700_000_000)]))
        .collect();
    let responses =
        futures_util::future::join_all(payloads.iter().map(|payload| app.post_whatsapp(payload)))
            .await;

    // Assert: some were refused, each refusal says when to retry, and what
    // was accepted is exactly what is stored.
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 503).collect();
    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(refused.len() + accepted, 64);
    assert!(
        !refused.is_empty(),
        "64 concurrent calls never filled a one-row queue"
    );
    assert!(
        refused
            .iter()
            .all(|r| r.headers().get("retry-after").is_some())
    );
    let metrics = app.metrics("c1").await;
    assert_eq!(metrics["delivered"], accepted as i64);
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
    let exported = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    assert!(
        exported.contains(&format!(
            "statushub_db_queue_rejections_total {}",
            refused.len()
        )),
        "{exported}"
    );
}

#[actix_web::test]
async fn a_failing_database_answers_503_and_stores_nothing() {
    // Arrange: break the schema under the running hub, as a failing disk or
    // a bad migration would.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let before = app.metrics("c1").await;
    app.db
        .tamper(&["ALTER TABLE status_events RENAME TO status_events_gone"])
        .await;

    // Act
    let response = app
        .post_whatsapp(&whatsapp_payload(&[("wamid.1", "read", 1_700_000_000)]))
        .await;

    // Assert
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(app.metrics("c1").await, before, "counters did not move");
    app.db
        .tamper(&["ALTER TABLE status_events_gone RENAME TO status_events"])
        .await;
    // Once the store is back, the provider's retry goes through.
    let retry = app
        .post_whatsapp(&whatsapp_payload(&[("wamid.1", "read", 1_700_000_000)]))
        .await;
    assert_eq!(retry.status(), 200);
    assert_eq!(app.metrics("c1").await["read"], 1);
}
