//! The stream itself: the first snapshot, coalesced metrics, statuses only
//! on request, heartbeats, and a stream that outlives its campaign's actor.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;

use super::{Recorder, collect_until, counters, data, ids, next, open};
use crate::helpers::*;

#[actix_web::test]
async fn the_stream_starts_with_a_snapshot_whose_id_is_the_version() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2"])
        .await;
    app.send_statuses(&[("wamid.1", "read", 1_700_000_000)])
        .await;
    let expected = app.metrics("c1").await;

    let mut events = open(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN, None).await;
    let first = next(&mut events, Duration::from_secs(5)).await;

    assert_eq!(first.event, "snapshot");
    assert_eq!(counters(&first), expected);
    assert_eq!(first.id, expected["version"].to_string());
    assert_eq!(
        first.retry, None,
        "retry arrives as its own field before the first event"
    );
}

/// One status per call makes one commit per call, and the hub publishes every
/// commit: the subscriber must still get at most one `metrics` event per
/// coalescing window, ending on the final counters.
#[actix_web::test]
async fn metrics_are_coalesced_to_one_per_window_and_end_on_the_final_counters() {
    const WINDOW: Duration = Duration::from_millis(400);
    // Arrival times can bunch by a scheduling delay of the reading thread
    // (a loaded 2-core CI machine); without coalescing the gaps are the
    // 100 ms tick, well under WINDOW - TOLERANCE.
    const TOLERANCE: Duration = Duration::from_millis(200);
    let app = spawn_app_with(|settings| settings.sse_coalesce = WINDOW).await;
    // Enough changes for five windows of sequential single-status commits
    // on a fast hub (a commit takes well under a millisecond).
    let ids = ids(3000);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "burst", &refs).await;
    let mut recorder = Recorder::start(&app, "/api/v1/campaigns/burst/stream", ADMIN_TOKEN);
    let (_, snapshot) = recorder.next(Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    let first_version: i64 = snapshot.id.parse().unwrap();

    // Act: single-status calls, one after the other, for at least five
    // windows, so that every window holds several commits.
    let changes: Vec<WaStatus<'_>> = ["sent", "delivered", "read", "failed"]
        .iter()
        .flat_map(|status| refs.iter().map(move |id| (*id, *status, 1_700_000_000)))
        .collect();
    let started = Instant::now();
    let mut commits = 0;
    while commits < 40 || started.elapsed() < WINDOW * 5 {
        assert!(
            commits < changes.len(),
            "ran out of changes after {commits} commits"
        );
        let receipt = app.send_statuses(&changes[commits..=commits]).await;
        assert_eq!(receipt["applied"], 1);
        commits += 1;
    }
    let final_counters = app.metrics("burst").await;
    let final_version = final_counters["version"].as_i64().unwrap();
    assert_eq!(final_version - first_version, commits as i64);

    // Assert: the stream ends on the final counters...
    let mut metrics: Vec<(Instant, Value)> = Vec::new();
    while metrics
        .last()
        .is_none_or(|(_, counters)| counters["version"] != final_version)
    {
        let (at, event) = recorder.next(Duration::from_secs(10)).await;
        assert_eq!(event.event, "metrics", "{event:?}");
        metrics.push((at, counters(&event)));
    }
    assert_eq!(metrics.last().unwrap().1, final_counters);
    let versions: Vec<i64> = metrics
        .iter()
        .map(|(_, counters)| counters["version"].as_i64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "versions only rise: {versions:?}"
    );
    // ...with fewer events than commits, one per window at most: every
    // event was sent at least a window after the one before (arrival times
    // may bunch a little), and the last arrived no earlier than that allows.
    assert!(
        metrics.len() < commits,
        "{commits} commits gave {} metrics events",
        metrics.len()
    );
    let gaps: Vec<Duration> = metrics
        .windows(2)
        .map(|pair| pair[1].0.duration_since(pair[0].0))
        .collect();
    assert!(
        gaps.iter().all(|gap| *gap + TOLERANCE >= WINDOW),
        "metrics events closer than the {WINDOW:?} window: {gaps:?}"
    );
    let span = metrics.last().unwrap().0.duration_since(started);
    let windows = u32::try_from(metrics.len() - 1).unwrap();
    assert!(
        span >= WINDOW * windows,
        "{} metrics events within {span:?}",
        metrics.len()
    );
}

#[actix_web::test]
async fn statuses_are_streamed_only_on_request() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.1", "wamid.2"])
        .await;
    let mut plain = open(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN, None).await;
    let mut with_statuses = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    )
    .await;
    next(&mut plain, Duration::from_secs(5)).await;
    next(&mut with_statuses, Duration::from_secs(5)).await;

    app.send_statuses(&[
        ("wamid.1", "delivered", 1_700_000_000),
        ("wamid.2", "failed", 1_700_000_001),
    ])
    .await;
    let final_version = app.metrics("c1").await["version"].as_i64().unwrap();

    let seen = collect_until(&mut with_statuses, Duration::from_secs(5), |event| {
        event.event == "metrics" && data(event)["version"].as_i64().unwrap() == final_version
    })
    .await;
    let statuses: Vec<Value> = seen
        .iter()
        .filter(|e| e.event == "status")
        .map(data)
        .collect();
    assert_eq!(statuses.len(), 2, "{seen:?}");
    assert_eq!(statuses[0]["provider_message_id"], "wamid.1");
    assert_eq!(statuses[0]["status"], "delivered");
    assert_eq!(statuses[1]["status"], "failed");
    assert_eq!(statuses[1]["tenant_id"], "t1");
    assert_eq!(statuses[1]["campaign_id"], "c1");
    let plain_events = collect_until(&mut plain, Duration::from_secs(5), |event| {
        event.event == "metrics" && data(event)["version"].as_i64().unwrap() == final_version
    })
    .await;
    assert!(plain_events.iter().all(|event| event.event == "metrics"));
}

#[actix_web::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let app = spawn_app_with(|settings| settings.sse_heartbeat = Duration::from_secs(1)).await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/c1/stream"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();

    let deadline = Instant::now() + Duration::from_secs(5);
    while !text.contains(": keep-alive") && Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    assert!(text.starts_with("retry: 3000\n\n"), "{text}");
    assert!(text.contains("event: snapshot"), "{text}");
    assert!(text.contains("\n: keep-alive\n"), "{text}");
}

/// `--sse-heartbeat-secs` is clamped to 1..=15 s: a heartbeat at least every
/// 15 s, whatever is configured.
#[test]
fn the_heartbeat_setting_is_capped_at_15_seconds() {
    use clap::Parser as _;
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = |secs: &str| {
        let cli = statushub::cli::Cli::try_parse_from([
            "statushub",
            "serve",
            "--sse-heartbeat-secs",
            secs,
        ])
        .unwrap();
        let Some(statushub::cli::Command::Serve(args)) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        let secrets = test_settings(dir.path()).secrets;
        statushub::config::Settings::from_parts(*args, secrets)
            .unwrap()
            .sse_heartbeat
    };

    assert_eq!(heartbeat("3600"), Duration::from_secs(15));
    assert_eq!(heartbeat("16"), Duration::from_secs(15));
    assert_eq!(heartbeat("15"), Duration::from_secs(15));
    assert_eq!(heartbeat("5"), Duration::from_secs(5));
    assert_eq!(heartbeat("0"), Duration::from_secs(1));
}

/// An idle stream gets a `:` comment every heartbeat interval. Read from the
/// raw bytes: SSE parsers hide comments.
#[actix_web::test]
async fn an_idle_stream_gets_a_heartbeat_comment_every_interval() {
    const HEARTBEAT: Duration = Duration::from_millis(500);
    // Arrival times can bunch by a scheduling delay of the reader (a loaded
    // 2-core CI machine).
    const TOLERANCE: Duration = Duration::from_millis(250);
    let app = spawn_app_with(|settings| settings.sse_heartbeat = HEARTBEAT).await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/c1/stream"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();

    let mut text = String::new();
    let mut beats: Vec<Instant> = Vec::new();
    while beats.len() < 7 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap_or_else(|_| panic!("no heartbeat in 10 s after {}: {text}", beats.len()))
            .expect("stream ended")
            .unwrap();
        let at = Instant::now();
        text.push_str(&String::from_utf8_lossy(&chunk));
        let total = text.matches(": keep-alive\n\n").count();
        beats.resize(total, at);
    }

    // The first comment comes at once, after the snapshot; then one per
    // interval: never sooner, and on average not much later.
    assert!(text.starts_with("retry: 3000\n\n"), "{text}");
    assert_eq!(text.matches("event:").count(), 1, "an idle stream: {text}");
    assert!(text.contains("event: snapshot\n"), "{text}");
    let gaps: Vec<Duration> = beats
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .collect();
    assert!(
        gaps.iter().all(|gap| *gap + TOLERANCE >= HEARTBEAT),
        "heartbeats sooner than every {HEARTBEAT:?}: {gaps:?}"
    );
    let mean = gaps.iter().sum::<Duration>() / u32::try_from(gaps.len()).unwrap();
    assert!(
        mean < HEARTBEAT * 2,
        "heartbeats every {mean:?} on average, not every {HEARTBEAT:?}: {gaps:?}"
    );
}

#[actix_web::test]
async fn a_stream_outlives_its_campaign_actor() {
    let app = spawn_app_with(|settings| settings.campaign_idle = Duration::from_secs(1)).await;
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    let mut events = open(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN, None).await;
    next(&mut events, Duration::from_secs(5)).await;

    // The campaign's actor stops for idleness while the stream stays open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health: Value = app
            .get("/webhooks/health", ADMIN_TOKEN)
            .await
            .json()
            .await
            .unwrap();
        if health["active_campaign_actors"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle actor never stopped: {health}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.send_statuses(&[("wamid.1", "read", 1_700_000_000)])
        .await;

    let event = next(&mut events, Duration::from_secs(5)).await;
    assert_eq!(event.event, "metrics");
    assert_eq!(data(&event)["read"], 1);
}
