//! What a campaign stream carries beside the counters: failure reasons and
//! cost in every `snapshot` and `metrics` event (as `GET …/metrics`), and
//! with `include=timeseries` the funnel buckets that changed, coalesced,
//! which add up to `GET …/timeseries` whatever the order and repetition of
//! the statuses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

/// `GET …/metrics` of a campaign of `t1`, whole.
async fn full_metrics(app: &TestApp, campaign: &str) -> Value {
    let response = app
        .get(
            &format!("/api/v1/campaigns/{campaign}/metrics?tenant_id=t1"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// `GET …/timeseries?bucket=` of a campaign of `t1`.
async fn series(app: &TestApp, campaign: &str, bucket: &str) -> Value {
    let response = app
        .get(
            &format!("/api/v1/campaigns/{campaign}/timeseries?bucket={bucket}&tenant_id=t1"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A dashboard's copy of the time series, built from `timeseries` events
/// only: a snapshot replaces it, a change replaces the buckets it lists.
#[derive(Debug, Default)]
struct Board {
    buckets: BTreeMap<String, Value>,
    latency: Value,
    version: i64,
    snapshots: usize,
    changes: usize,
}

impl Board {
    fn apply(&mut self, event: &Event) {
        assert_eq!(event.event, "timeseries");
        let data = data(event);
        assert_eq!(data["complete"], true, "{data}");
        assert_eq!(event.id, data["version"].to_string());
        if data["snapshot"] == true {
            self.buckets.clear();
            self.snapshots += 1;
        } else {
            assert!(
                data["version"].as_i64().unwrap() > self.version,
                "a change at an older version: {data}"
            );
            self.changes += 1;
        }
        for bucket in data["buckets"].as_array().unwrap() {
            self.buckets
                .insert(bucket["start"].as_str().unwrap().to_owned(), bucket.clone());
        }
        self.latency = data["latency"].clone();
        self.version = data["version"].as_i64().unwrap();
    }

    /// The buckets with any count, as `GET …/timeseries` lists them.
    fn nonzero(&self) -> Vec<Value> {
        self.buckets
            .values()
            .filter(|bucket| {
                ["sent", "delivered", "read", "clicked", "failed"]
                    .iter()
                    .any(|stage| bucket[stage] != 0)
            })
            .cloned()
            .collect()
    }

    /// Asserts the board equals the endpoint's answer.
    async fn assert_matches(&self, app: &TestApp, campaign: &str, bucket: &str) {
        let expected = series(app, campaign, bucket).await;
        assert_eq!(
            Value::Array(self.nonzero()),
            expected["buckets"],
            "the streamed {bucket} buckets against GET …/timeseries"
        );
        assert_eq!(self.latency, expected["latency"]);
    }
}

/// Reads the stream until the `metrics` event of `version`, then the
/// `timeseries` event that may follow it at once; applies every
/// `timeseries` event to `board` and returns the `metrics` events.
async fn follow_to(events: &mut Events, board: &mut Board, version: i64) -> Vec<Value> {
    let mut metrics = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = next(events, left).await;
        match event.event.as_str() {
            "timeseries" => board.apply(&event),
            "metrics" => {
                let data = data(&event);
                // Each timeseries event follows the metrics event of its version.
                let at = data["version"].as_i64().unwrap();
                metrics.push(data);
                if at == version {
                    break;
                }
            }
            "status" => {}
            other => panic!("unexpected {other} event"),
        }
    }
    // A `timeseries` event of the last version comes right behind it.
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        board.apply(&event);
    }
    metrics
}

/// Minute `minute` after 2024-05-01T12:00Z, in Unix seconds.
fn at(minute: i64) -> i64 {
    1_714_564_800 + minute * 60
}

#[actix_web::test]
async fn snapshot_and_metrics_carry_failure_reasons_and_cost_like_the_metrics_endpoint() {
    // Arrange
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2", "wamid.3"])
        .await;
    app.send_statuses(&[("wamid.1", "failed", at(0)), ("wamid.2", "sent", at(0))])
        .await;
    let expected = full_metrics(&app, "c1").await;
    assert_eq!(expected["failure_reasons"][0]["code"], "131026");

    // Act
    let mut events = open(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN, None).await;
    let snapshot = next(&mut events, Duration::from_secs(5)).await;
    let response = app
        .post_whatsapp(&statushub::webhooks::whatsapp::envelope(vec![
            whatsapp_status("wamid.3", "failed", at(1), Some((131_049, "Not delivered"))),
        ]))
        .await;
    assert_eq!(response.status(), 200);
    let after = full_metrics(&app, "c1").await;
    let version = after["version"].as_i64().unwrap();
    let seen = collect_until(&mut events, Duration::from_secs(5), |event| {
        data(event)["version"] == version
    })
    .await;

    // Assert: the same body as GET …/metrics, before and after.
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(data(&snapshot), expected);
    let last = seen.last().unwrap();
    assert_eq!(last.event, "metrics");
    assert_eq!(data(last), after);
    assert_eq!(after["failure_reasons"].as_array().unwrap().len(), 2);

    // The tenant stream keeps to the counters (see the README).
    let mut tenant = open(&app, "/api/v1/stream", ADMIN_TOKEN, None).await;
    let counters = next(&mut tenant, Duration::from_secs(5)).await;
    assert_eq!(counters.event, "snapshot");
    assert!(data(&counters).get("failure_reasons").is_none());
}

#[actix_web::test]
async fn a_change_of_cost_alone_moves_the_version_and_reaches_the_stream() {
    // Arrange: `read` without pricing, so the message costs nothing yet.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let response = app
        .post_whatsapp(&statushub::webhooks::whatsapp::envelope(vec![
            whatsapp_status("wamid.1", "read", at(0), None),
        ]))
        .await;
    assert_eq!(response.status(), 200);
    let before = full_metrics(&app, "c1").await;
    assert_eq!(before["cost"]["billable"], 0);
    let mut events = open(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN, None).await;
    let snapshot = next(&mut events, Duration::from_secs(5)).await;
    assert_eq!(data(&snapshot), before);

    // Act: a later `played` (a read) with pricing changes no status, only
    // the cost.
    let receipt = app.send_statuses(&[("wamid.1", "played", at(1))]).await;
    assert_eq!(receipt["applied"], 1, "{receipt}");

    // Assert
    let after = full_metrics(&app, "c1").await;
    assert_eq!(after["cost"]["billable"], 1);
    assert_eq!(after["by_status"], before["by_status"]);
    assert!(
        after["version"].as_i64() > before["version"].as_i64(),
        "{before} → {after}"
    );
    let event = next(&mut events, Duration::from_secs(5)).await;
    assert_eq!(event.event, "metrics");
    assert_eq!(data(&event), after);
}

#[actix_web::test]
async fn streamed_buckets_add_up_to_the_endpoint_after_shuffled_duplicated_delivery() {
    // Arrange: 30 messages, each sent, delivered, read or failed over
    // twenty minutes; every status twice, in a shuffled order, so stages
    // move back to earlier minutes (and out of later buckets) as late
    // statuses arrive.
    let app = spawn_app().await;
    let ids: Vec<String> = (0..30).map(|i| format!("wamid.t{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let mut statuses: Vec<(usize, &str, i64)> = Vec::new();
    for (i, _) in ids.iter().enumerate() {
        let start = (i % 7) as i64;
        statuses.push((i, "sent", at(start)));
        if i % 5 == 4 {
            statuses.push((i, "failed", at(start + 3)));
        } else {
            statuses.push((i, "delivered", at(start + 1 + (i % 3) as i64)));
            if i % 2 == 0 {
                statuses.push((i, "read", at(start + 6 + (i % 11) as i64)));
            }
        }
    }
    let mut order: Vec<(usize, &str, i64)> = statuses.iter().chain(&statuses).copied().collect();
    let mut seed: u64 = 0x5eed_2026;
    for i in (1..order.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (seed >> 33) as usize % (i + 1));
    }
    // Some statuses before the streams open: their snapshots hold them.
    let (early, late) = order.split_at(order.len() / 4);
    for (i, status, ts) in early {
        app.send_statuses(&[(refs[*i], status, *ts)]).await;
    }
    let mut boards = Vec::new();
    for bucket in ["1m", "5m"] {
        let mut events = open(
            &app,
            &format!("/api/v1/campaigns/c1/stream?include=timeseries&bucket={bucket}"),
            ADMIN_TOKEN,
            None,
        )
        .await;
        let snapshot = next(&mut events, Duration::from_secs(5)).await;
        assert_eq!(snapshot.event, "snapshot");
        let mut board = Board::default();
        board.apply(&next(&mut events, Duration::from_secs(5)).await);
        assert_eq!(board.snapshots, 1);
        board.assert_matches(&app, "c1", bucket).await;
        boards.push((bucket, events, board));
    }

    // Act: the rest, one status per request (one commit each).
    for (i, status, ts) in late {
        app.send_statuses(&[(refs[*i], status, *ts)]).await;
    }
    let version = full_metrics(&app, "c1").await["version"].as_i64().unwrap();

    // Assert: each board equals the endpoint, having been sent changes
    // coalesced (fewer events than commits), every one complete.
    for (bucket, events, board) in &mut boards {
        let metrics = follow_to(events, board, version).await;
        board.assert_matches(&app, "c1", bucket).await;
        assert!(board.changes >= 1, "{bucket}: no change was streamed");
        assert!(
            board.changes <= metrics.len(),
            "{bucket}: {} timeseries events for {} metrics events",
            board.changes,
            metrics.len()
        );
        assert!(
            metrics.len() < late.len(),
            "{bucket}: {} metrics events for {} commits: not coalesced",
            metrics.len(),
            late.len()
        );
        assert_eq!(board.version, version, "{bucket}");
    }
}

#[actix_web::test]
async fn a_live_change_lists_the_buckets_it_moved_and_a_resume_gets_a_fresh_window() {
    // Arrange: a dashboard follows the 1m series.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2", "wamid.3"])
        .await;
    app.send_statuses(&[
        ("wamid.1", "delivered", at(5)),
        ("wamid.2", "sent", at(0)),
        ("wamid.3", "sent", at(9)),
    ])
    .await;
    let path = "/api/v1/campaigns/c1/stream?include=timeseries";
    let mut events = open(&app, path, ADMIN_TOKEN, None).await;
    let snapshot = next(&mut events, Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    let mut board = Board::default();
    board.apply(&next(&mut events, Duration::from_secs(5)).await);
    board.assert_matches(&app, "c1", "1m").await;

    // Act: wamid.3 is read at minute 7, which moves its `sent` stage out
    // of minute 9 (left empty) into minute 7.
    app.send_statuses(&[("wamid.3", "read", at(7))]).await;
    let metrics = next(&mut events, Duration::from_secs(5)).await;
    let change = next(&mut events, Duration::from_secs(5)).await;

    // Assert: exactly the two buckets, the emptied one as zeros, with the
    // metrics event's id.
    assert_eq!(metrics.event, "metrics");
    assert_eq!(change.event, "timeseries");
    assert_eq!(change.id, metrics.id);
    let body = data(&change);
    let minute = |m: i64| statushub::clock::format_ms(at(m) * 1000);
    assert_eq!(
        body["buckets"],
        json!([
            {"start": minute(7), "sent": 1, "delivered": 1, "read": 1, "clicked": 0, "failed": 0},
            {"start": minute(9), "sent": 0, "delivered": 0, "read": 0, "clicked": 0, "failed": 0},
        ]),
        "{body}"
    );
    board.apply(&change);
    board.assert_matches(&app, "c1", "1m").await;

    // A client that comes back (here after missing a change) gets a fresh
    // window, whatever id it resumes from: its series may be older than
    // the id (a timeseries event lost with its connection).
    drop(events);
    app.send_statuses(&[("wamid.2", "read", at(3))]).await;
    for resume_from in [snapshot.id.clone(), metrics.id.clone()] {
        let mut events = open(&app, path, ADMIN_TOKEN, Some(&resume_from)).await;
        let fresh = next(&mut events, Duration::from_secs(5)).await;
        assert_eq!(fresh.event, "snapshot");
        let window = next(&mut events, Duration::from_secs(5)).await;
        assert_eq!(data(&window)["snapshot"], true);
        let mut resumed = Board::default();
        resumed.apply(&window);
        resumed.assert_matches(&app, "c1", "1m").await;
    }
}

#[actix_web::test]
async fn unknown_includes_and_buckets_are_refused_and_the_tenant_stream_has_no_timeseries() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    for path in [
        "/api/v1/campaigns/c1/stream?include=timeseries,funnel",
        "/api/v1/campaigns/c1/stream?include=timeseries&bucket=2m",
        "/api/v1/stream?include=timeseries",
        "/api/v1/stream?include=everything",
    ] {
        let response = app.get(path, ADMIN_TOKEN).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let response = app
        .get(
            "/api/v1/campaigns/c1/stream?include=statuses,timeseries&bucket=1h",
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200);
}

/// Reads of reasons and cost, reads of changed buckets, fan-out windows.
async fn reads(app: &TestApp) -> (f64, f64, f64) {
    (
        app.scrape(r#"statushub_sse_frames_encoded_total{kind="campaign_metrics"}"#)
            .await,
        app.scrape(r#"statushub_sse_frames_encoded_total{kind="timeseries"}"#)
            .await,
        app.scrape("statushub_sse_fanout_windows_total").await,
    )
}

/// Ten dashboards of one campaign with the time series: the failure
/// reasons, cost and changed buckets are read from the store once per
/// frame, shared by the ten, not once per stream.
#[actix_web::test]
async fn store_reads_are_shared_by_the_streams_of_a_campaign() {
    // Arrange
    let app = spawn_app().await;
    let ids: Vec<String> = (0..40).map(|i| format!("wamid.r{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut events = open(
            &app,
            "/api/v1/campaigns/c1/stream?include=timeseries",
            ADMIN_TOKEN,
            None,
        )
        .await;
        take(&mut events, 2).await;
        streams.push(events);
    }
    let before = reads(&app).await;

    // Act
    for (i, id) in refs.iter().enumerate() {
        app.send_statuses(&[(id, "read", at(i as i64 % 4))]).await;
    }
    let version = full_metrics(&app, "c1").await["version"].as_i64().unwrap();
    for events in &mut streams {
        let mut board = Board::default();
        follow_to(events, &mut board, version).await;
    }
    let after = reads(&app).await;

    // Assert: at most one read of each kind per window.
    let windows = after.2 - before.2;
    let summary_reads = after.0 - before.0;
    let series_reads = after.1 - before.1;
    assert!(windows >= 1.0);
    assert!(
        summary_reads <= windows,
        "{summary_reads} reads of reasons and cost in {windows} windows for 10 streams"
    );
    assert!(
        series_reads <= windows,
        "{series_reads} reads of changed buckets in {windows} windows for 10 streams"
    );
}

#[actix_web::test]
async fn the_stream_events_are_documented() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/openapi.json", ADMIN_TOKEN).await;
    let document: Value = response.json().await.unwrap();
    let names = &document["components"]["schemas"]["CampaignEventName"]["enum"];
    assert!(
        names.as_array().unwrap().contains(&json!("timeseries")),
        "{names}"
    );
    let parameters =
        document["paths"]["/api/v1/campaigns/{campaign_id}/stream"]["get"]["parameters"]
            .as_array()
            .unwrap();
    assert!(
        parameters
            .iter()
            .any(|parameter| parameter["name"] == "bucket"),
        "{parameters:?}"
    );
}
