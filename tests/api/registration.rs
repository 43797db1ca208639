//! `POST /api/v1/messages`: JSON arrays and NDJSON, idempotency, conflicts.

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn ndjson_and_arrays_register_idempotently() {
    let app = spawn_app().await;
    let ndjson = "{\"tenant_id\":\"t1\",\"campaign_id\":\"c1\",\"channel\":\"whatsapp\",\"provider_message_id\":\"wamid.1\",\"recipient\":\"+15550001\"}\n\
                  \n\
                  {\"tenant_id\":\"t1\",\"campaign_id\":\"c1\",\"channel\":\"email\",\"provider_message_id\":\"ses-1\"}\n";

    let response = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first: serde_json::Value = response.json().await.unwrap();
    let again = app
        .register(&json!([{"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "wamid.1"}]))
        .await;

    assert_eq!(first["registered"], 2);
    assert_eq!(again["registered"], 0);
    assert_eq!(again["existing"], 1);
    let metrics = app.metrics("c1").await;
    assert_eq!(metrics["total"], 2);
    assert_eq!(metrics["by_status"]["pending"], 2);
    assert_eq!(
        app.message("whatsapp", "wamid.1").await["recipient"],
        "+15550001"
    );
}

#[actix_web::test]
async fn a_message_id_already_in_another_campaign_is_a_conflict() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;

    let receipt = app
        .register_whatsapp("t1", "c2", &["wamid.1", "wamid.2"])
        .await;

    assert_eq!(receipt["registered"], 1);
    assert_eq!(receipt["conflicts"], json!(["wamid.1"]));
    assert_eq!(app.metrics("c1").await["total"], 1);
    assert_eq!(app.metrics("c2").await["total"], 1);
}

#[actix_web::test]
async fn the_same_campaign_name_in_two_tenants_needs_a_tenant_for_the_admin() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "spring", &["wamid.1"]).await;
    app.register_whatsapp("t2", "spring", &["wamid.2", "wamid.3"])
        .await;

    let ambiguous = app
        .get("/api/v1/campaigns/spring/metrics", ADMIN_TOKEN)
        .await;
    let t2: serde_json::Value = app
        .get("/api/v1/campaigns/spring/metrics?tenant_id=t2", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(ambiguous.status(), 400);
    assert_eq!(t2["total"], 2);
    assert_eq!(t2["tenant_id"], "t2");
}

#[actix_web::test]
async fn one_json_object_registers_one_message() {
    let app = spawn_app().await;

    let receipt = app
        .register(
            &json!({"tenant_id": "t1", "campaign_id": "c1", "channel": "email",
                          "provider_message_id": "ses-solo", "recipient": "a@example.com"}),
        )
        .await;

    assert_eq!(receipt["registered"], 1);
    assert_eq!(receipt["existing"], 0);
    let message = app.message("email", "ses-solo").await;
    assert_eq!(message["campaign_id"], "c1");
    assert_eq!(message["recipient"], "a@example.com");
    assert_eq!(message["status"], "pending");
    assert_eq!(app.metrics("c1").await["total"], 1);
}

/// A single object may be pretty-printed over several lines: it is one
/// object, not broken NDJSON.
#[actix_web::test]
async fn one_pretty_printed_json_object_registers_one_message() {
    let app = spawn_app().await;
    let body = serde_json::to_string_pretty(&json!({"tenant_id": "t1", "campaign_id": "c1",
        "channel": "whatsapp", "provider_message_id": "wamid.pretty"}))
    .unwrap();
    assert!(body.lines().count() > 1);

    let response = app
        .client
        .post(app.url("/api/v1/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(
        app.message("whatsapp", "wamid.pretty").await["status"],
        "pending"
    );
}

/// A registration is an object with named keys: values listed by position
/// (which serde's derive would otherwise take) are refused, in an array and
/// on an NDJSON line alike, and nothing is registered.
#[actix_web::test]
async fn registrations_listed_by_position_are_refused() {
    let app = spawn_app().await;
    for body in [
        r#"[["t1","c1","whatsapp","wamid.pos"]]"#,
        r#"["t1","c1","whatsapp","wamid.pos"]"#,
        "[\"t1\",\"c1\",\"whatsapp\",\"wamid.pos\"]\n[\"t1\",\"c1\",\"whatsapp\",\"wamid.pos2\"]",
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/messages"))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    assert_eq!(app.count_rows("messages").await, 0);
}
