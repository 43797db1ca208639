//! Who may stream what, and for how long: tenant isolation, a token's expiry,
//! and the caps on open streams.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::{next, open};
use crate::helpers::*;

#[actix_web::test]
async fn streams_enforce_tenant_isolation() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "mine", &["wamid.1"]).await;
    app.register_whatsapp("t2", "theirs", &["wamid.2"]).await;
    let token = app.tenant_token("t1", None);
    let restricted = app.tenant_token("t1", Some(vec!["other".to_owned()]));
    let expired = authenticator()
        .mint("t1", None, Duration::from_secs(0))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let status = |path: String, token: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        status(
            "/api/v1/campaigns/theirs/stream?tenant_id=t2".into(),
            token.clone()
        )
        .await,
        403
    );
    assert_eq!(
        status("/api/v1/stream?tenant_id=t2".into(), token.clone()).await,
        403
    );
    assert_eq!(
        status("/api/v1/campaigns/mine/stream".into(), restricted).await,
        403
    );
    assert_eq!(
        status("/api/v1/campaigns/mine/stream".into(), expired.clone()).await,
        401
    );
    assert_eq!(status("/api/v1/stream".into(), expired).await, 401);
    assert_eq!(status("/api/v1/stream".into(), "forged".into()).await, 401);
    assert_eq!(status("/webhooks/stream".into(), token.clone()).await, 403);
    let anonymous = app
        .client
        .get(app.url("/api/v1/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // EventSource passes the token in the query string.
    let by_query = app
        .client
        .get(app.url(&format!(
            "/api/v1/campaigns/mine/stream?access_token={token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
}

/// A stream opened shortly before its token expires ends at the expiry, after
/// `event: expired`, and carries nothing committed later.
#[actix_web::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.0", "wamid.1"])
        .await;
    // Whole seconds: a token of 3 s lives 2 to 3 s, time enough to open
    // the stream on a loaded machine.
    let token = authenticator()
        .mint("t1", None, Duration::from_secs(3))
        .unwrap();
    let mut events = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        &token,
        None,
    )
    .await;
    assert_eq!(
        next(&mut events, Duration::from_secs(5)).await.event,
        "snapshot"
    );

    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.next().await {
            seen.push(event.event);
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token: {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("expired"), "{seen:?}");

    // A change after the expiry reaches nobody through that token.
    app.send_statuses(&[("wamid.0", "sent", 1_700_000_000)])
        .await;
    let response = app.get("/api/v1/campaigns/c1/stream", &token).await;
    assert_eq!(response.status(), 401, "an expired token opens nothing");
}

/// Opens a stream and returns the response, whatever its status; the body
/// (the stream) stays open while the response lives.
async fn try_open(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn open_streams_are_capped_per_token_per_tenant_and_in_total() {
    let app = spawn_app_with(|settings| {
        settings.stream_limits.per_token = 2;
        settings.stream_limits.per_tenant = 3;
        settings.stream_limits.total = 4;
    })
    .await;
    app.register_whatsapp("t1", "c1", &["wamid.0"]).await;
    app.register_whatsapp("t2", "c2", &["wamid.other"]).await;
    let first_token = app.tenant_token("t1", None);
    let second_token = authenticator()
        .mint("t1", Some(vec!["c1".to_owned()]), Duration::from_secs(3600))
        .unwrap();
    let other_tenant = app.tenant_token("t2", None);
    let refused = |response: &reqwest::Response| {
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("retry-after"));
    };

    // Per token: 2.
    let mut open_streams = vec![
        try_open(&app, "/api/v1/campaigns/c1/stream", &first_token).await,
        try_open(&app, "/api/v1/stream", &first_token).await,
    ];
    assert!(open_streams.iter().all(|response| response.status() == 200));
    refused(&try_open(&app, "/api/v1/stream", &first_token).await);

    // Per tenant: 3, over all its tokens.
    open_streams.push(try_open(&app, "/api/v1/stream", &second_token).await);
    assert_eq!(open_streams[2].status(), 200);
    refused(&try_open(&app, "/api/v1/stream", &second_token).await);

    // In total: 4, the admin included.
    open_streams.push(try_open(&app, "/api/v1/stream", &other_tenant).await);
    assert_eq!(open_streams[3].status(), 200);
    refused(&try_open(&app, "/api/v1/stream", ADMIN_TOKEN).await);
    refused(&try_open(&app, "/webhooks/stream", ADMIN_TOKEN).await);

    // Closing a stream gives its slot back.
    open_streams.remove(0);
    let started = Instant::now();
    loop {
        let response = try_open(&app, "/api/v1/stream", &first_token).await;
        if response.status() == 200 {
            break;
        }
        refused(&response);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
