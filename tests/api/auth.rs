//! Tenant isolation and token checks on the API.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_tenant_token_cannot_read_another_tenants_campaign_or_message() {
    // Arrange
    let app = spawn_app().await;
    app.register_whatsapp("tenant-a", "c1", &["wamid.a"]).await;
    app.register_whatsapp("tenant-b", "secret-campaign", &["wamid.b"])
        .await;
    let token_a = app.tenant_token("tenant-a", None);

    // Act
    let own = app.get("/api/v1/campaigns/c1/metrics", &token_a).await;
    let other_explicit = app
        .get(
            "/api/v1/campaigns/secret-campaign/metrics?tenant_id=tenant-b",
            &token_a,
        )
        .await;
    let other_implicit = app
        .get("/api/v1/campaigns/secret-campaign/metrics", &token_a)
        .await;
    let other_message = app.get("/api/v1/messages/whatsapp/wamid.b", &token_a).await;
    let unknown_message = app
        .get("/api/v1/messages/whatsapp/wamid.nobody", &token_a)
        .await;
    let own_message = app.get("/api/v1/messages/whatsapp/wamid.a", &token_a).await;

    // Assert
    assert_eq!(own.status(), 200);
    assert_eq!(other_explicit.status(), 403);
    assert_eq!(
        other_implicit.status(),
        404,
        "looked up in the token's own tenant"
    );
    assert_eq!(own_message.status(), 200);
    // Another tenant's message answers exactly like one that does not exist.
    assert_eq!(other_message.status(), 404);
    assert_eq!(unknown_message.status(), 404);
    assert_eq!(
        other_message.text().await.unwrap(),
        unknown_message.text().await.unwrap()
    );
    let body = other_explicit.text().await.unwrap();
    assert!(!body.contains("total"), "no counters leak: {body}");
}

#[actix_web::test]
async fn a_tenant_token_cannot_register_for_another_tenant() {
    let app = spawn_app().await;
    let token_a = app.tenant_token("tenant-a", None);

    let response = app
        .register_with(
            &token_a,
            &json!([{"tenant_id": "tenant-b", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "x"}]),
        )
        .await;
    let own = app
        .register_with(
            &token_a,
            &json!([{"tenant_id": "tenant-a", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "y"}]),
        )
        .await;

    assert_eq!(response.status(), 403);
    assert_eq!(own.status(), 200);
    assert_eq!(app.count_rows("messages").await, 1);
}

#[actix_web::test]
async fn campaign_restricted_tokens_see_only_their_campaigns() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    app.register_whatsapp("t1", "c2", &["wamid.2"]).await;
    let token = app.tenant_token("t1", Some(vec!["c1".to_owned()]));

    assert_eq!(
        app.get("/api/v1/campaigns/c1/metrics", &token)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get("/api/v1/campaigns/c2/metrics", &token)
            .await
            .status(),
        403
    );
    assert_eq!(
        app.get("/api/v1/messages/whatsapp/wamid.2", &token)
            .await
            .status(),
        404,
        "a message outside the token's campaigns answers like an unknown one"
    );
}

#[actix_web::test]
async fn missing_forged_and_expired_tokens_are_unauthorized() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let forged = statushub::auth::Authenticator::new(
        &secrecy::SecretString::from("someone-elses-secret"),
        &secrecy::SecretString::from("x"),
    )
    .mint("t1", None, Duration::from_secs(3600))
    .unwrap();
    let expired = authenticator()
        .mint("t1", None, Duration::from_secs(0))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let anonymous = app
        .client
        .get(app.url("/api/v1/campaigns/c1/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    for token in [forged.as_str(), expired.as_str(), "garbage", ""] {
        assert_eq!(
            app.get("/api/v1/campaigns/c1/metrics", token)
                .await
                .status(),
            401,
            "{token}"
        );
    }
    // `?access_token=` works where headers cannot be set (EventSource).
    let valid = app.tenant_token("t1", None);
    let by_query = app
        .client
        .get(app.url(&format!(
            "/api/v1/campaigns/c1/metrics?access_token={valid}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
}

#[actix_web::test]
async fn the_token_subcommand_mints_a_working_token() {
    let app = spawn_app().await;
    app.register_whatsapp("t9", "c9", &["wamid.9"]).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_statushub"))
        .args(["token", "--tenant", "t9", "--campaign", "c9", "--ttl", "1h"])
        .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATUSHUB_DATA_DIR", app.dir.path().join("cli-data"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();

    let response = app.get("/api/v1/campaigns/c9/metrics", token.trim()).await;

    assert_eq!(response.status(), 200);
}
