//! Bad input gets a documented answer, never a 500 or a hung connection,
//! and the hub stays healthy.

use serde_json::json;

use crate::helpers::*;

/// Checks the hub still answers, on fresh connections: the server rightly
/// closes a connection whose oversized body it refused to read, and a pooled
/// client could otherwise try to reuse it.
async fn assert_healthy(app: &TestApp) {
    let client = reqwest::Client::new();
    let response = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[actix_web::test]
async fn signed_junk_is_dead_lettered_and_acknowledged() {
    let app = spawn_app().await;
    let junk: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"object":"page","entry":[]}"#.to_vec(),
        br#"{"object":"whatsapp_business_account","entry":"nope"}"#.to_vec(),
        br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":[{"id":7,"status":["read"],"timestamp":{}}]}}]}]}"#.to_vec(),
        "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"changes\":[{\"value\":{\"statuses\":[{\"id\":\"wamid.\u{1F4A5}\u{202E}\",\"status\":\"r\u{0000}ead\",\"timestamp\":\"-99999999999999999999\"}]}}]}]}".as_bytes().to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
    ];

    for (index, body) in junk.iter().enumerate() {
        let response = app.post_whatsapp_bytes(body.clone()).await;
        assert_eq!(response.status(), 200, "case {index}");
        let receipt: serde_json::Value = response.json().await.unwrap();
        assert_eq!(receipt["dead_lettered"], 1, "case {index}");
        assert_eq!(receipt["applied"], 0, "case {index}");
    }

    assert_eq!(app.count_rows("dead_letters").await, junk.len() as i64);
    let letters: serde_json::Value = app
        .get("/webhooks/dead-letters?limit=100", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(letters.as_array().unwrap().len(), junk.len());
    assert_eq!(
        letters[junk.len() - 1]["body"],
        "{not json",
        "kept verbatim, oldest last"
    );
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn a_bad_status_beside_good_ones_loses_nothing() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.good"]).await;
    let mut payload = whatsapp_payload(&[("wamid.good", "read", 1_700_000_000)]);
    payload["entry"][0]["changes"][0]["value"]["statuses"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "wamid.bad", "status": "read", "timestamp": "yesterday"}));

    let receipt: serde_json::Value = app.post_whatsapp(&payload).await.json().await.unwrap();

    assert_eq!(receipt["applied"], 1);
    assert_eq!(receipt["dead_lettered"], 1);
    assert_eq!(app.metrics("c1").await["read"], 1);
}

#[actix_web::test]
async fn unsigned_junk_with_verification_disabled_is_a_bad_request() {
    let app = spawn_app_with(|settings| settings.enable_webhook_verification = false).await;

    for body in [&b"{not json"[..], br#"{"object":"page"}"#, b"\xff\xfe"] {
        let response = app.post_whatsapp_raw(body.to_vec(), None).await;
        assert_eq!(response.status(), 400);
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().len() > 5);
    }
    assert_eq!(app.count_rows("dead_letters").await, 0);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn oversized_bodies_are_refused_with_413() {
    let app = spawn_app().await;
    let huge = vec![b' '; 1024 * 1024 + 1];

    let response = app.post_whatsapp_bytes(huge).await;

    assert_eq!(response.status(), 413);
    assert_eq!(app.count_rows("dead_letters").await, 0);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn oversized_body_without_content_length_is_refused_too() {
    let app = spawn_app().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b'x'; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));

    let sent = app
        .client
        .post(app.url("/webhooks/whatsapp"))
        .header("x-hub-signature-256", "sha256=00")
        .body(body)
        .send()
        .await;

    // The body is read (up to the limit) before the signature can be
    // checked, so the limit answers first: 413, and the connection closes.
    // A client still writing when it closes may see its write fail instead
    // of the answer (a race in TCP, not in the hub): that is a refusal too.
    match sent {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => assert!(
            error.is_request() && !error.is_timeout(),
            "the hub neither answered nor closed: {error:?}"
        ),
    }
    assert_eq!(app.count_rows("dead_letters").await, 0);
    assert_eq!(app.count_rows("status_events").await, 0);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn malformed_api_input_gets_clear_errors() {
    let app = spawn_app().await;
    let cases = [
        json!([{"tenant_id": "t1", "campaign_id": "c1", "channel": "sms", "provider_message_id": "x"}]),
        json!([{"tenant_id": "", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "x"}]),
        json!([{"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp"}]),
        json!([{"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": 5}]),
        json!([{"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp", "provider_message_id": "x".repeat(300)}]),
        json!([]),
        json!("hello"),
    ];
    for case in &cases {
        let response = app.register_with(ADMIN_TOKEN, case).await;
        assert_eq!(response.status(), 400, "{case}");
    }
    assert_eq!(
        app.count_rows("messages").await,
        0,
        "nothing stored from a rejected batch"
    );

    let not_found = app.get("/api/v1/campaigns/nope/metrics", ADMIN_TOKEN).await;
    assert_eq!(not_found.status(), 404);
    let not_found = app.get("/api/v1/messages/whatsapp/nope", ADMIN_TOKEN).await;
    assert_eq!(not_found.status(), 404);
    let bad_channel = app.get("/api/v1/messages/pigeon/nope", ADMIN_TOKEN).await;
    assert_eq!(bad_channel.status(), 404);
    assert_healthy(&app).await;
}

#[actix_web::test]
async fn ops_endpoints_answer() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a"]).await;
    app.send_statuses(&[
        ("wamid.a", "read", 1_700_000_000),
        ("wamid.unknown", "sent", 1_700_000_000),
    ])
    .await;

    let health: serde_json::Value = app
        .get("/webhooks/health", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"], "ok");
    assert_eq!(health["stats"]["events_stored"], 1);
    assert_eq!(health["stats"]["unmatched_buffered"], 1);
    assert!(health["active_campaign_actors"].as_i64().unwrap() >= 1);
    assert_eq!(health["queue_depth"], 0);
    assert_eq!(health["recent_events"].as_array().unwrap().len(), 2);

    let events: serde_json::Value = app
        .get("/webhooks/events?limit=1", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1);
    let events: serde_json::Value = app
        .get("/webhooks/events?limit=5000", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 2);

    let metrics = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    assert!(
        metrics.contains("statushub_statuses_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("statushub_http_requests_total{code=\"200\",route=\"/webhooks/whatsapp\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("statushub_db_commit_seconds_bucket"));

    for path in [
        "/metrics",
        "/webhooks/health",
        "/webhooks/events",
        "/webhooks/dead-letters",
    ] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let tenant = app.get(path, &app.tenant_token("t1", None)).await;
        assert_eq!(tenant.status(), 403, "{path}");
    }
}

/// `/webhooks/events` lists applied and unmatched events together, newest
/// first: 100 by default, `limit` at most 1000.
#[actix_web::test]
async fn the_event_log_is_newest_first_100_by_default_and_at_most_1000() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..1100).map(|i| format!("wamid.log{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let statuses: Vec<WaStatus<'_>> = refs.iter().map(|id| (*id, "sent", 1_700_000_000)).collect();
    for call in statuses.chunks(550) {
        app.send_statuses(call).await;
    }
    // Three more, each arriving in a later millisecond than the one before.
    for status in [
        ("wamid.ghost1", "sent", 1_700_000_001),
        (refs[0], "delivered", 1_700_000_002),
        ("wamid.ghost2", "read", 1_700_000_003),
    ] {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.send_statuses(&[status]).await;
    }
    let list = |query: &'static str| {
        let app = &app;
        async move {
            let response = app
                .get(&format!("/webhooks/events{query}"), ADMIN_TOKEN)
                .await;
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Vec<serde_json::Value>>().await.unwrap()
        }
    };

    let default = list("").await;
    let capped = list("?limit=5000").await;

    assert_eq!(default.len(), 100);
    assert_eq!(capped.len(), 1000);
    assert_eq!(list("?limit=1000").await.len(), 1000);
    assert_eq!(list("?limit=3").await, default[..3]);
    let newest: Vec<(&str, &str, &str)> = default[..3]
        .iter()
        .map(|event| {
            (
                event["kind"].as_str().unwrap(),
                event["provider_message_id"].as_str().unwrap(),
                event["event"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        newest,
        [
            ("unmatched", "wamid.ghost2", "read"),
            ("applied", "wamid.log0", "delivered"),
            ("unmatched", "wamid.ghost1", "sent"),
        ]
    );
    assert_eq!(capped[..100], default[..]);
    let arrivals: Vec<&str> = capped
        .iter()
        .map(|event| event["received_at"].as_str().unwrap())
        .collect();
    assert!(
        arrivals.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first"
    );
    // The 1,000 listed are the newest: of the 1,103 events, the oldest go.
    let newest_applied: Vec<i64> = app
        .db
        .fetch(
            "SELECT id FROM status_events ORDER BY id DESC LIMIT 998",
            &[],
        )
        .await
        .iter()
        .map(|row| row[0].int())
        .collect();
    let listed_applied: Vec<i64> = capped
        .iter()
        .filter(|event| event["kind"] == "applied")
        .map(|event| event["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed_applied, newest_applied);
}
