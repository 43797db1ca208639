//! With the store down, the hub says so and stores nothing: `/readyz` and
//! every webhook answer 503 with `Retry-After` (never 500), and once the
//! store is back the providers' retries go through. The outage comes from
//! [`TestDb::outage`], so each backend breaks its own way.

use serde_json::{Value, json};

use crate::helpers::*;

/// Asserts a 503 that tells the client when to retry.
fn assert_unavailable(response: &reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    assert_eq!(response.headers()["retry-after"], "5", "{what}");
}

fn ses_delivery(mail_id: &str) -> Value {
    json!({
        "eventType": "Delivery",
        "mail": {"timestamp": "2024-05-01T12:00:00.000Z", "messageId": mail_id, "source": "a@example.com"},
        "delivery": {"timestamp": "2024-05-01T12:00:02.000Z", "recipients": ["b@example.com"]},
    })
}

#[actix_web::test]
async fn readyz_is_503_with_retry_after_while_the_store_is_down_and_200_once_it_is_back() {
    let app = spawn_app().await;
    assert_eq!(app.readyz().await.status(), 200);

    assert_eq!(app.scrape("statushub_ready").await, 1.0);

    let outage = app.db.outage().await;
    let down = app.readyz().await;
    assert_unavailable(&down, "readyz with the store down");
    // Still down on a second look: no connection was lucky.
    assert_unavailable(&app.readyz().await, "readyz again");
    // The readiness gauge says so, for the alert.
    assert_eq!(app.scrape("statushub_ready").await, 0.0);

    outage.end().await;
    let up = app.readyz().await;
    assert_eq!(up.status(), 200);
    assert_eq!(up.text().await.unwrap(), "ready");
    assert_eq!(app.scrape("statushub_ready").await, 1.0);
}

#[actix_web::test]
async fn webhooks_answer_503_not_500_while_the_store_is_down_and_retries_then_go_through() {
    // Arrange: known messages on both channels, a hub verifying SNS.
    let signer = SnsSigner::new();
    let cert_dir = signer.cert_dir();
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(cert_dir)).await;
    app.register(&json!([
        {"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "wamid.down"},
        {"tenant_id": "t1", "campaign_id": "c1", "channel": "email", "provider_message_id": "ses-down"},
    ]))
    .await;
    let before = app.assert_counts_agree("c1").await;
    let events_before = app.count_rows("status_events").await;
    let known = whatsapp_payload(&[("wamid.down", "read", 1_700_000_000)]);
    let unknown = whatsapp_payload(&[("wamid.nobody", "delivered", 1_700_000_000)]);
    let email = signer.notification("sns-down-1", &ses_delivery("ses-down"), "2");
    let registration = json!([
        {"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "wamid.later"}
    ]);

    // Act: everything a provider or sender does, with the store down.
    let outage = app.db.outage().await;
    let answers = [
        ("whatsapp, known message", app.post_whatsapp(&known).await),
        (
            "whatsapp, unknown message",
            app.post_whatsapp(&unknown).await,
        ),
        ("ses through sns", app.post_sns(&email).await),
        (
            "registration",
            app.register_with(ADMIN_TOKEN, &registration).await,
        ),
        (
            "message view",
            app.get("/api/v1/messages/whatsapp/wamid.down", ADMIN_TOKEN)
                .await,
        ),
    ];

    // Assert: each says 503 and when to retry.
    for (what, response) in &answers {
        assert_unavailable(response, what);
    }
    outage.end().await;
    // Nothing was half-stored, and the counters did not move.
    assert_eq!(app.count_rows("status_events").await, events_before);
    assert_eq!(app.count_rows("unmatched_statuses").await, 0);
    assert_eq!(app.count_rows("messages").await, 2);
    assert_eq!(counts_only(&app.metrics("c1").await), counts_only(&before));

    // The providers' retries (the same notifications) now go through.
    let receipt = |applied: u64, unmatched: u64| json!({"received": 1, "applied": applied, "duplicates": 0, "unmatched": unmatched, "dead_lettered": 0});
    for (what, response, expected) in [
        ("whatsapp", app.post_whatsapp(&known).await, receipt(1, 0)),
        ("whatsapp", app.post_whatsapp(&unknown).await, receipt(0, 1)),
        ("ses", app.post_sns(&email).await, receipt(1, 0)),
    ] {
        assert_eq!(response.status(), 200, "{what} retry");
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
    assert_eq!(app.register(&registration).await["registered"], 1);
    let metrics = app.assert_counts_agree("c1").await;
    assert_eq!(
        (&metrics["total"], &metrics["read"], &metrics["delivered"]),
        (&json!(3), &json!(1), &json!(2))
    );
    assert_eq!(
        app.message("whatsapp", "wamid.down").await["status"],
        "read"
    );
}
