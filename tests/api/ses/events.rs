//! Events and counters: every SES event type in both forms, redeliveries,
//! order, events before their registration, and what is refused, kept as a
//! dead letter or acknowledged.

use serde_json::{Value, json};

use super::harness::*;
use crate::helpers::*;

#[actix_web::test]
async fn every_ses_event_type_in_both_forms_moves_the_right_counters() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let mut cases = Vec::new();
    for form in ["eventType", "notificationType"] {
        for (name, _, _) in SES_EVENTS {
            cases.push((form, name, format!("{form}-{}", name.replace(' ', "-"))));
        }
    }
    let ids: Vec<&str> = cases.iter().map(|(_, _, id)| id.as_str()).collect();
    register_email(&app, "c1", &ids).await;

    for (index, (form, name, id)) in cases.iter().enumerate() {
        let version = if index % 2 == 0 { "2" } else { "1" };
        let envelope = signer.sign(notification(&ses_event(form, name, id)), version);
        let receipt = deliver(&app, &envelope).await;
        assert_eq!(receipt, receipt_json(1, 0, 0, 0), "{form} {name}");

        let message = app.message("email", id).await;
        let (seen, current) = expected_after(name);
        assert_eq!(message["status"], current, "{form} {name}");
        let mut seen_now: Vec<&str> = message["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect();
        seen_now.sort_unstable();
        let mut seen = seen.to_vec();
        seen.sort_unstable();
        assert_eq!(seen_now, seen, "{form} {name}");
        assert_eq!(message["timeline"][0]["event"], *name, "{form} {name}");
    }

    let bounce = app.message("email", "notificationType-Bounce").await;
    assert_eq!(
        bounce["error"],
        json!({"code": "Permanent/General", "title": "smtp; 550 5.1.1 user unknown"})
    );
    let metrics = app.metrics("c1").await;
    let all = cases.iter().map(|(_, name, _)| *name);
    assert_eq!(counts_only(&metrics), expected_counts(all));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}

#[actix_web::test]
async fn a_redelivered_sns_message_changes_nothing() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "c1", &["e-1"]).await;
    let envelope = signer.sign(notification(&ses_event("eventType", "Open", "e-1")), "2");

    assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
    let before = app.metrics("c1").await;
    let rows = stored(&app).await;

    for _ in 0..2 {
        assert_eq!(deliver(&app, &envelope).await, receipt_json(0, 1, 0, 0));
    }
    assert_eq!(app.metrics("c1").await, before);
    assert_eq!(stored(&app).await, rows);
    assert_eq!(
        app.message("email", "e-1").await["timeline"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[actix_web::test]
async fn an_open_before_the_delivery_ends_like_the_reverse_order() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "in-order", &["e-1"]).await;
    register_email(&app, "reversed", &["e-2"]).await;

    for (id, order) in [("e-1", ["Delivery", "Open"]), ("e-2", ["Open", "Delivery"])] {
        for name in order {
            let envelope = signer.sign(notification(&ses_event("eventType", name, id)), "1");
            assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
        }
    }

    let (in_order, reversed) = (
        app.message("email", "e-1").await,
        app.message("email", "e-2").await,
    );
    assert_eq!(in_order["status"], "read");
    for key in ["status", "seen", "error"] {
        assert_eq!(in_order[key], reversed[key], "{key}");
    }
    let expected = expected_counts(["Open"]);
    for campaign in ["in-order", "reversed"] {
        let metrics = app.metrics(campaign).await;
        assert_eq!(counts_only(&metrics), expected, "{campaign}");
        assert_eq!(
            counts_only(&metrics),
            app.sql_counts(campaign).await,
            "{campaign}"
        );
    }
}

#[actix_web::test]
async fn events_for_unknown_messages_wait_for_their_registration() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let envelope = signer.sign(notification(&ses_event("eventType", "Click", "late")), "2");

    assert_eq!(deliver(&app, &envelope).await, receipt_json(0, 0, 1, 0));
    register_email(&app, "c1", &["late"]).await;

    let metrics = app.metrics("c1").await;
    assert_eq!(counts_only(&metrics), expected_counts(["Click"]));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}

#[actix_web::test]
async fn unparseable_or_inconsistent_unsigned_input_is_a_bad_request() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let send = |body: &'static str, kind: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .header("content-type", "text/plain; charset=UTF-8")
            .body(body);
        if let Some(kind) = kind {
            request = request.header("x-amz-sns-message-type", kind);
        }
        request.send()
    };
    let cases = [
        ("", Some("Notification")),
        ("not json", Some("Notification")),
        ("[]", Some("Notification")),
        (r#"{"Type":"Notification"}"#, Some("Notification")),
        (
            r#"{"Type":"Other","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"z"}"#,
            Some("Other"),
        ),
    ];
    for (body, kind) in cases {
        assert_eq!(send(body, kind).await.unwrap().status(), 400, "{body}");
    }

    // The header must repeat the body's Type.
    let signed = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "2");
    for kind in [None, Some("SubscriptionConfirmation"), Some("notification")] {
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .body(signed.to_string());
        if let Some(kind) = kind {
            request = request.header("x-amz-sns-message-type", kind);
        }
        assert_eq!(request.send().await.unwrap().status(), 400, "{kind:?}");
    }
    assert_eq!(stored(&app).await, [0, 0, 0]);

    // Any Content-Type is accepted (SNS may be configured to send JSON).
    for content_type in [Some("application/json"), None] {
        let envelope = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "1");
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .header("x-amz-sns-message-type", "Notification")
            .body(envelope.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{content_type:?}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            receipt_json(0, 0, 1, 0)
        );
    }
}

#[actix_web::test]
async fn signed_but_uninterpretable_messages_are_dead_lettered_and_ses_setup_notices_acknowledged()
{
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;

    let unknown =
        r#"{"eventType":"Teleport","mail":{"messageId":"e-1","timestamp":"2024-05-01T12:00:00Z"}}"#;
    let receipt = deliver(&app, &signer.sign(notification(unknown), "2")).await;
    assert_eq!(receipt, receipt_json(0, 0, 0, 1));
    assert_eq!(stored(&app).await, [0, 0, 1]);
    let letters: Value = app
        .get("/webhooks/dead-letters?limit=10", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(letters[0]["channel"], "email");
    assert!(
        letters[0]["reason"].as_str().unwrap().contains("Teleport"),
        "{letters}"
    );
    assert!(
        letters[0]["body"].as_str().unwrap().contains("Teleport"),
        "{letters}"
    );
    // What proves it was signed is kept, so it can be replayed without a
    // second check; replayed now, it is still uninterpretable and stays open.
    assert_eq!(letters[0]["verification"]["method"], "sns-signature");
    assert!(
        letters[0]["verification"]["cert_url"]
            .as_str()
            .unwrap()
            .ends_with(".pem"),
        "{letters}"
    );
    let id = letters[0]["id"].as_i64().unwrap();
    let replayed: Value = app
        .client
        .post(app.url(&format!("/webhooks/dead-letters/{id}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["state"], "open", "{replayed}");
    assert_eq!(replayed["replay"]["outcome"], "failed", "{replayed}");
    assert!(
        replayed["replay"]["error"]
            .as_str()
            .unwrap()
            .contains("Teleport"),
        "{replayed}"
    );

    // What SES publishes about its own set-up is acknowledged, not kept.
    for notice in [
        "Successfully validated SNS topic for Amazon SES event publishing.".to_owned(),
        json!({"notificationType": "AmazonSnsSubscriptionSucceeded",
               "message": format!("You have successfully subscribed your Amazon SNS topic '{TOPIC}' to receive 'Bounce' notifications from Amazon SES for identity 'example.com'.")})
        .to_string(),
    ] {
        let receipt = deliver(&app, &signer.sign(notification(&notice), "1")).await;
        assert_eq!(receipt["received"], 0, "{notice}");
        assert_eq!(receipt["dead_lettered"], 0, "{notice}");
    }
    assert_eq!(stored(&app).await, [0, 0, 1]);
}

#[actix_web::test]
async fn without_verification_unsigned_envelopes_are_accepted_but_junk_is_not_kept() {
    let app = spawn_app_with(|settings| settings.enable_webhook_verification = false).await;
    register_email(&app, "c1", &["e-1"]).await;

    let unsigned = notification(&ses_event("notificationType", "Delivery", "e-1"));
    assert_eq!(deliver(&app, &unsigned).await, receipt_json(1, 0, 0, 0));
    assert_eq!(
        post_sns(&app, &notification("Hello world")).await.status(),
        400
    );
    assert_eq!(stored(&app).await, [1, 0, 0]);
}
