//! Resuming: `Last-Event-ID` and `?last_event_id=`, the replay bound, and
//! the tenant stream's cursor.

use std::time::Duration;

use eventsource_stream::Event;
use futures_util::StreamExt as _;
use serde_json::Value;

use super::{collect_until, counters, data, ids, kinds, next, open, take};
use crate::helpers::*;

/// A client that resumes at the current version already has everything: no
/// snapshot is resent, and the next thing it gets is the next change.
#[actix_web::test]
async fn resuming_at_the_current_version_sends_nothing_until_the_next_change() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2"])
        .await;
    app.send_statuses(&[("wamid.1", "sent", 1_700_000_000)])
        .await;
    let current = app.metrics("c1").await["version"].as_i64().unwrap();
    let mut resumed = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        Some(&current.to_string()),
    )
    .await;

    app.send_statuses(&[("wamid.2", "delivered", 1_700_000_001)])
        .await;

    let seen = take(&mut resumed, 2).await;
    assert_eq!(kinds(&seen), ["status", "metrics"], "{seen:?}");
    assert_eq!(data(&seen[0])["provider_message_id"], "wamid.2");
    assert_eq!(seen[0].id, (current + 1).to_string());
    assert_eq!(counters(&seen[1]), app.metrics("c1").await);
}

/// `?last_event_id=` resumes like `Last-Event-ID`, for clients that cannot
/// set the header: a fresh snapshot, then exactly the missed changes.
#[actix_web::test]
async fn the_last_event_id_query_parameter_resumes_like_the_header() {
    let app = spawn_app().await;
    let ids = ids(4);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let seen_version = app.metrics("c1").await["version"].as_i64().unwrap();
    app.send_statuses(&[
        (refs[0], "sent", 1_700_000_000),
        (refs[1], "read", 1_700_000_001),
    ])
    .await;

    let mut resumed = open(
        &app,
        &format!("/api/v1/campaigns/c1/stream?include=statuses&last_event_id={seen_version}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    app.send_statuses(&[(refs[2], "failed", 1_700_000_002)])
        .await;

    let seen = take(&mut resumed, 4).await;
    assert_eq!(
        kinds(&seen),
        ["snapshot", "status", "status", "status"],
        "{seen:?}"
    );
    assert_eq!(data(&seen[0])["version"], seen_version + 2);
    let changes: Vec<(String, Value)> = seen[1..]
        .iter()
        .map(|event| (event.id.clone(), data(event)["provider_message_id"].clone()))
        .collect();
    let expected: Vec<(String, Value)> = (1..=3)
        .map(|n| {
            (
                (seen_version + n).to_string(),
                Value::from(refs[n as usize - 1]),
            )
        })
        .collect();
    assert_eq!(changes, expected);
}

/// A resume without `include=statuses` gets a fresh snapshot and no
/// replayed statuses.
#[actix_web::test]
async fn resuming_without_statuses_gets_a_fresh_snapshot_and_no_statuses() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2", "wamid.3"])
        .await;
    let seen_version = app.metrics("c1").await["version"].as_i64().unwrap();
    app.send_statuses(&[
        ("wamid.1", "sent", 1_700_000_000),
        ("wamid.2", "read", 1_700_000_001),
    ])
    .await;
    let now = app.metrics("c1").await;

    let mut resumed = open(
        &app,
        "/api/v1/campaigns/c1/stream",
        ADMIN_TOKEN,
        Some(&seen_version.to_string()),
    )
    .await;
    app.send_statuses(&[("wamid.3", "delivered", 1_700_000_002)])
        .await;

    let seen = take(&mut resumed, 2).await;
    assert_eq!(kinds(&seen), ["snapshot", "metrics"], "{seen:?}");
    assert_eq!(counters(&seen[0]), now);
    assert_eq!(counters(&seen[1]), app.metrics("c1").await);
}

#[actix_web::test]
async fn last_event_id_replays_exactly_the_missed_statuses() {
    // Arrange: a client saw the stream up to some version, then dropped.
    let app = spawn_app().await;
    let ids = ids(10);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    app.send_statuses(&[
        (refs[0], "sent", 1_700_000_000),
        (refs[1], "sent", 1_700_000_000),
    ])
    .await;
    let mut first = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    )
    .await;
    let snapshot = next(&mut first, Duration::from_secs(5)).await;
    let seen_version: i64 = snapshot.id.parse().unwrap();
    drop(first);

    // Act: five changes and one no-op happen while it is away; it resumes.
    app.send_statuses(&[
        (refs[2], "delivered", 1_700_000_010),
        (refs[3], "read", 1_700_000_011),
        (refs[0], "sent", 1_700_000_000),
        (refs[4], "failed", 1_700_000_012),
    ])
    .await;
    app.send_statuses(&[
        (refs[5], "sent", 1_700_000_013),
        (refs[2], "read", 1_700_000_014),
    ])
    .await;
    let now = app.metrics("c1").await;
    let mut resumed = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        Some(&seen_version.to_string()),
    )
    .await;

    // Assert: a fresh snapshot, then the five missed changes in order, nothing else.
    let snapshot = next(&mut resumed, Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(counters(&snapshot), now);
    let mut replayed = Vec::new();
    for _ in 0..5 {
        replayed.push(next(&mut resumed, Duration::from_secs(5)).await);
    }
    let replayed_ids: Vec<i64> = replayed
        .iter()
        .map(|event| event.id.parse().unwrap())
        .collect();
    assert!(replayed.iter().all(|event| event.event == "status"));
    assert_eq!(
        replayed_ids,
        ((seen_version + 1)..=(seen_version + 5)).collect::<Vec<_>>()
    );
    let messages: Vec<String> = replayed
        .iter()
        .map(|event| {
            data(event)["provider_message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        messages,
        [&ids[2], &ids[3], &ids[4], &ids[5], &ids[2]].map(String::clone)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), resumed.next())
            .await
            .is_err(),
        "nothing more"
    );
}

#[actix_web::test]
async fn resuming_past_the_replay_bound_resets() {
    let app = spawn_app_with(|settings| settings.sse_replay_limit = 3).await;
    let ids = ids(10);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let start = app.metrics("c1").await["version"].as_i64().unwrap();
    let statuses: Vec<WaStatus<'_>> = refs.iter().map(|id| (*id, "sent", 1_700_000_000)).collect();
    app.send_statuses(&statuses).await;

    let mut resumed = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        Some(&start.to_string()),
    )
    .await;

    assert_eq!(
        next(&mut resumed, Duration::from_secs(5)).await.event,
        "reset"
    );
    let snapshot = next(&mut resumed, Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(data(&snapshot)["sent"], 10);
}

#[actix_web::test]
async fn the_tenant_stream_carries_every_campaign_of_the_tenant_and_resumes_by_cursor() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "a", &["wamid.a1", "wamid.a2"])
        .await;
    app.register_whatsapp("t1", "b", &["wamid.b1"]).await;
    app.register_whatsapp("t2", "other", &["wamid.o1"]).await;
    let token = app.tenant_token("t1", None);

    let mut events = open(&app, "/api/v1/stream?include=statuses", &token, None).await;
    let snapshots = [
        next(&mut events, Duration::from_secs(5)).await,
        next(&mut events, Duration::from_secs(5)).await,
    ];
    let mut campaigns: Vec<String> = snapshots
        .iter()
        .map(|e| data(e)["campaign_id"].as_str().unwrap().to_owned())
        .collect();
    campaigns.sort();
    assert_eq!(campaigns, ["a", "b"]);
    assert!(snapshots.iter().all(|event| event.event == "snapshot"));

    app.send_statuses(&[
        ("wamid.o1", "read", 1_700_000_000),
        ("wamid.b1", "read", 1_700_000_001),
    ])
    .await;
    let seen = collect_until(&mut events, Duration::from_secs(5), |event| {
        event.event == "metrics" && data(event)["campaign_id"] == "b"
    })
    .await;
    let statuses: Vec<&Event> = seen
        .iter()
        .filter(|event| event.event == "status")
        .collect();
    assert_eq!(statuses.len(), 1, "only t1's change: {seen:?}");
    assert_eq!(data(statuses[0])["provider_message_id"], "wamid.b1");
    let cursor = statuses[0].id.clone();
    drop(events);

    app.send_statuses(&[
        ("wamid.a1", "delivered", 1_700_000_002),
        ("wamid.o1", "failed", 1_700_000_003),
    ])
    .await;
    let mut resumed = open(
        &app,
        "/api/v1/stream?include=statuses",
        &token,
        Some(&cursor),
    )
    .await;
    // Snapshots of both campaigns, then exactly the one missed t1 change.
    let seen = take(&mut resumed, 3).await;
    let kinds = kinds(&seen);
    assert_eq!(kinds, ["snapshot", "snapshot", "status"], "{seen:?}");
    let replayed = &seen[2];
    assert_eq!(data(replayed)["provider_message_id"], "wamid.a1");
    assert_eq!(data(replayed)["status"], "delivered");
    assert!(replayed.id.parse::<i64>().unwrap() > cursor.parse::<i64>().unwrap());
    assert!(
        seen.iter().all(|event| data(event)["tenant_id"] == "t1"),
        "{seen:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), resumed.next())
            .await
            .is_err(),
        "nothing more"
    );
}

#[actix_web::test]
async fn tenant_resume_counts_only_what_a_restricted_token_may_see() {
    // Arrange: while the client is away, more changes than the replay bound
    // happen in a campaign it may not see, then a few in the one it may.
    let app = spawn_app_with(|settings| settings.sse_replay_limit = 5).await;
    let hidden = ids(20);
    let hidden_refs: Vec<&str> = hidden.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "hidden", &hidden_refs).await;
    app.register_whatsapp("t1", "visible", &["wamid.v1", "wamid.v2"])
        .await;
    let token = app.tenant_token("t1", Some(vec!["visible".to_owned()]));
    let mut events = open(&app, "/api/v1/stream?include=statuses", &token, None).await;
    let snapshot = next(&mut events, Duration::from_secs(5)).await;
    assert_eq!(data(&snapshot)["campaign_id"], "visible");
    let cursor = snapshot.id.clone();
    drop(events);
    let statuses: Vec<WaStatus<'_>> = hidden_refs
        .iter()
        .map(|id| (*id, "sent", 1_700_000_000))
        .collect();
    app.send_statuses(&statuses).await;
    app.send_statuses(&[
        ("wamid.v1", "read", 1_700_000_001),
        ("wamid.v2", "failed", 1_700_000_002),
    ])
    .await;

    // Act
    let mut resumed = open(
        &app,
        "/api/v1/stream?include=statuses",
        &token,
        Some(&cursor),
    )
    .await;

    // Assert: no reset, the visible campaign's snapshot, then its two changes.
    let seen = take(&mut resumed, 3).await;
    let kinds = kinds(&seen);
    assert_eq!(kinds, ["snapshot", "status", "status"], "{seen:?}");
    assert!(
        seen.iter()
            .all(|event| data(event)["campaign_id"] == "visible")
    );
}

#[actix_web::test]
async fn tenant_resume_sends_fresh_snapshots_after_registrations() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let token = app.tenant_token("t1", None);
    let mut events = open(&app, "/api/v1/stream", &token, None).await;
    let snapshot = next(&mut events, Duration::from_secs(5)).await;
    drop(events);

    // Registrations write no status event, so the cursor does not move.
    app.register_whatsapp("t1", "c1", &["wamid.2", "wamid.3"])
        .await;
    app.register_whatsapp("t1", "c2", &["wamid.4"]).await;
    let mut resumed = open(&app, "/api/v1/stream", &token, Some(&snapshot.id)).await;

    let mut totals = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let event = next(&mut resumed, Duration::from_secs(5)).await;
        assert_eq!(event.event, "snapshot");
        totals.insert(
            data(&event)["campaign_id"].as_str().unwrap().to_owned(),
            data(&event)["total"].clone(),
        );
    }
    assert_eq!(totals["c1"], 3);
    assert_eq!(totals["c2"], 1);
}
