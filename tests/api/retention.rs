//! Stored history is bounded: timeline events and dead letters past their
//! retention are pruned in batches, a resume from before the window gets a
//! reset, dead-letter listings are paged with cut bodies, and `/metrics`
//! counts the rows.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::helpers::*;

/// Longest a pruning pass may take to show: a hang guard, not a bound on speed.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Retention of a few seconds (enough for a slow machine to finish the
/// arrange steps first), applied every 200 ms.
fn short_retention(settings: &mut statushub::config::Settings) {
    settings.retention.events = Some(Duration::from_secs(5));
    settings.retention.dead_letters = Some(Duration::from_secs(5));
    settings.retention.interval = Duration::from_millis(200);
}

async fn wait_for_rows(app: &TestApp, table: &str, rows: i64) {
    let started = Instant::now();
    while app.count_rows(table).await != rows {
        assert!(
            started.elapsed() < HANG_GUARD,
            "{table} never reached {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the value of the Prometheus sample `name` (labels included).
async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sample} not in /metrics:\n{text}"))
}

#[actix_web::test]
async fn old_timeline_events_and_dead_letters_are_pruned_and_counted() {
    let app = spawn_app_with(short_retention).await;
    let ids: Vec<String> = (0..30).map(|i| format!("wamid.r{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    // One call, so that the counts below come well within the retention
    // even on a loaded machine.
    let statuses: Vec<WaStatus<'_>> = refs
        .iter()
        .flat_map(|id| {
            [
                (*id, "delivered", 1_700_000_000),
                (*id, "read", 1_700_000_060),
            ]
        })
        .collect();
    assert_eq!(app.send_statuses(&statuses).await["applied"], 60);
    for _ in 0..3 {
        app.post_whatsapp_bytes(b"{not json".to_vec()).await;
    }
    assert_eq!(app.count_rows("status_events").await, 60);
    assert_eq!(app.count_rows("dead_letters").await, 3);
    assert_eq!(
        metric(&app, "statushub_table_rows{table=\"status_events\"}").await,
        60.0
    );
    assert_eq!(
        metric(&app, "statushub_table_rows{table=\"dead_letters\"}").await,
        3.0
    );

    wait_for_rows(&app, "status_events", 0).await;
    wait_for_rows(&app, "dead_letters", 0).await;

    // The messages keep their state; only the timeline went.
    let message = app.message("whatsapp", "wamid.r7").await;
    assert_eq!(message["status"], "read");
    assert_eq!(message["timeline"].as_array().unwrap().len(), 0);
    assert_eq!(
        counts_only(&app.metrics("c1").await),
        app.sql_counts("c1").await
    );
    assert_eq!(
        metric(&app, "statushub_table_rows{table=\"status_events\"}").await,
        0.0
    );
    assert_eq!(
        metric(&app, "statushub_pruned_rows_total{table=\"status_events\"}").await,
        60.0
    );
    assert_eq!(
        metric(&app, "statushub_pruned_rows_total{table=\"dead_letters\"}").await,
        3.0
    );
    assert_eq!(
        metric(&app, "statushub_table_rows{table=\"messages\"}").await,
        30.0
    );

    // New events after the pass are kept until they age.
    app.send_statuses(&[("wamid.r0", "clicked", 1_700_000_100)])
        .await;
    assert_eq!(app.count_rows("status_events").await, 1);
}

#[actix_web::test]
async fn zero_retention_keeps_history_forever() {
    let app = spawn_app_with(|settings| {
        short_retention(settings);
        settings.retention.events = None;
        settings.retention.dead_letters = None;
    })
    .await;
    app.register_whatsapp("t1", "c1", &["wamid.k"]).await;
    app.send_statuses(&[("wamid.k", "sent", 1_700_000_000)])
        .await;
    app.post_whatsapp_bytes(b"{not json".to_vec()).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(app.count_rows("status_events").await, 1);
    assert_eq!(app.count_rows("dead_letters").await, 1);
}

/// Opens a stream and returns its first `count` event kinds (and data).
async fn first_events(
    app: &TestApp,
    path: &str,
    last_event_id: &str,
    count: usize,
) -> Vec<(String, Value)> {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .header("last-event-id", last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(HANG_GUARD, events.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .unwrap();
        seen.push((
            event.event,
            serde_json::from_str(&event.data).unwrap_or(Value::Null),
        ));
    }
    seen
}

#[actix_web::test]
async fn a_resume_from_before_the_retention_window_gets_a_reset_and_a_snapshot() {
    let app = spawn_app_with(|settings| {
        short_retention(settings);
        settings.retention.dead_letters = None;
    })
    .await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b"])
        .await;
    // Version 1 is the registration; each change below takes the next.
    app.send_statuses(&[("wamid.a", "sent", 1_700_000_000)])
        .await;
    app.send_statuses(&[("wamid.b", "sent", 1_700_000_001)])
        .await;

    // Within the window, a resume from version 1 replays both changes.
    let replayed = first_events(&app, "/api/v1/campaigns/c1/stream?include=statuses", "1", 3).await;
    let kinds: Vec<&str> = replayed.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["snapshot", "status", "status"]);

    wait_for_rows(&app, "status_events", 0).await;
    app.send_statuses(&[("wamid.a", "read", 1_700_000_002)])
        .await;

    // Past it, the events after version 1 are partly gone: reset, snapshot,
    // and nothing pretends to be a complete replay.
    let campaign = first_events(&app, "/api/v1/campaigns/c1/stream?include=statuses", "1", 2).await;
    assert_eq!(campaign[0].0, "reset", "{campaign:?}");
    assert_eq!(campaign[1].0, "snapshot");
    assert_eq!(campaign[1].1["read"], 1);

    // From the newest pruned version on, the replay is whole again.
    let whole = first_events(&app, "/api/v1/campaigns/c1/stream?include=statuses", "3", 2).await;
    let kinds: Vec<&str> = whole.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["snapshot", "status"]);

    // The tenant stream (ids are event ids) resets the same way.
    let tenant = first_events(&app, "/api/v1/stream?include=statuses", "1", 2).await;
    assert_eq!(tenant[0].0, "reset", "{tenant:?}");
    assert_eq!(tenant[1].0, "snapshot");
}

#[actix_web::test]
async fn dead_letters_are_listed_in_pages_with_cut_bodies_and_whole_by_id() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for index in 0..5 {
        let body = format!("{{\"junk\":{index},\"pad\":\"{}\"}}", "x".repeat(10_000));
        app.post_whatsapp_bytes(body.clone().into_bytes()).await;
        sent.push(body);
    }

    let page = |query: String| {
        let app = &app;
        async move {
            let response = app
                .get(&format!("/webhooks/dead-letters?{query}"), ADMIN_TOKEN)
                .await;
            assert_eq!(response.status(), 200);
            response.json::<Vec<Value>>().await.unwrap()
        }
    };
    let first = page("limit=2".to_owned()).await;
    assert_eq!(first.len(), 2);
    let last_id = first[1]["id"].as_i64().unwrap();
    let second = page(format!("limit=2&before={last_id}")).await;
    let third = page(format!("limit=2&before={}", second[1]["id"])).await;
    assert_eq!(second.len(), 2);
    assert_eq!(third.len(), 1);
    let all: Vec<&Value> = first.iter().chain(&second).chain(&third).collect();
    for (letter, body) in all.iter().zip(sent.iter().rev()) {
        assert_eq!(letter["body_bytes"], body.len());
        assert_eq!(letter["body_truncated"], true);
        assert_eq!(letter["body"].as_str().unwrap(), &body[..1024]);
    }
    let ids: Vec<i64> = all
        .iter()
        .map(|letter| letter["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );

    // Whole by id; an unknown id is a 404; the page size is capped.
    let whole: Value = app
        .get(&format!("/webhooks/dead-letters/{}", ids[4]), ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["body"], sent[0]);
    assert_eq!(whole["body_truncated"], false);
    let missing = app.get("/webhooks/dead-letters/999999", ADMIN_TOKEN).await;
    assert_eq!(missing.status(), 404);
    let tenant = app.tenant_token("t1", None);
    assert_eq!(
        app.get("/webhooks/dead-letters/1", &tenant).await.status(),
        403
    );
}
