//! What fan-out costs: a stream is woken only for the topic it follows and
//! only when it changed, a campaign's metrics are encoded once per window
//! whatever the number of subscribers, topics go with their last subscriber,
//! and every subscriber still ends on the final state. Costs are read from
//! the hub's own counters in `/metrics`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use eventsource_stream::Event;
use futures_util::StreamExt as _;
use serde_json::Value;

use super::{Events, collect_until, counters, data, next, open};
use crate::helpers::*;

/// Returns the value of `series` (a metric name, with its labels if it has
/// any, as `/metrics` prints them).
async fn scrape(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

const WAKEUPS: &str = "statushub_sse_wakeups_total";
const WINDOWS: &str = "statushub_sse_fanout_windows_total";
const ENCODED_METRICS: &str = "statushub_sse_frames_encoded_total{kind=\"metrics\"}";
const ENCODED_STATUSES: &str = "statushub_sse_frames_encoded_total{kind=\"status\"}";
const TOPICS: &str = "statushub_sse_topics";

/// The hub's fan-out counters at one moment.
#[derive(Clone, Copy, Debug)]
struct Costs {
    wakeups: f64,
    windows: f64,
    encoded_metrics: f64,
    encoded_statuses: f64,
}

impl Costs {
    async fn read(app: &TestApp) -> Costs {
        Costs {
            wakeups: scrape(app, WAKEUPS).await,
            windows: scrape(app, WINDOWS).await,
            encoded_metrics: scrape(app, ENCODED_METRICS).await,
            encoded_statuses: scrape(app, ENCODED_STATUSES).await,
        }
    }

    fn since(self, before: Costs) -> Costs {
        Costs {
            wakeups: self.wakeups - before.wakeups,
            windows: self.windows - before.windows,
            encoded_metrics: self.encoded_metrics - before.encoded_metrics,
            encoded_statuses: self.encoded_statuses - before.encoded_statuses,
        }
    }
}

/// Waits until no fan-out window and no stream wake-up has happened for
/// 800 ms (eight default windows, and longer than the PostgreSQL change
/// feed's 500 ms poll, which picks up a page whose notification a busy
/// machine delivered late), at most 10 s.
async fn settle(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (scrape(app, WINDOWS).await, scrape(app, WAKEUPS).await);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(800) {
        assert!(Instant::now() < deadline, "the fan-out never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (scrape(app, WINDOWS).await, scrape(app, WAKEUPS).await);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

/// Waits until the hub reports `count` topics.
async fn wait_for_topics(app: &TestApp, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let topics = scrape(app, TOPICS).await;
        if topics == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topics} topics followed, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `events` until the counters of `campaign` at `version` arrive
/// (as a snapshot or metrics event); returns everything read.
async fn until_counters(events: &mut Events, campaign: &str, version: i64) -> Vec<Event> {
    collect_until(events, Duration::from_secs(20), |event| {
        ["snapshot", "metrics"].contains(&event.event.as_str())
            && data(event)["campaign_id"] == campaign
            && data(event)["version"] == version
    })
    .await
}

/// Sends one status per call, one call after the other: one commit each.
async fn commit_one_by_one(app: &TestApp, changes: &[WaStatus<'_>]) {
    for change in changes {
        let receipt = app.send_statuses(std::slice::from_ref(change)).await;
        assert_eq!(receipt["applied"], 1, "{receipt}");
    }
}

fn message_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("wamid.{prefix}{i}")).collect()
}

/// Streams of campaign A, idle or not, are never woken while only campaign
/// B changes, and get nothing; B's one stream is woken at most once per
/// window, however many commits the window holds.
#[actix_web::test]
async fn a_stream_is_woken_only_for_its_own_campaign() {
    // Arrange: ten streams on A (half with statuses), one on B.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "a", &["wamid.a"]).await;
    let ids = message_ids("b", 30);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "b", &refs).await;
    let mut on_a = Vec::new();
    for n in 0..10 {
        let path = if n % 2 == 0 {
            "/api/v1/campaigns/a/stream"
        } else {
            "/api/v1/campaigns/a/stream?include=statuses"
        };
        let mut events = open(&app, path, ADMIN_TOKEN, None).await;
        assert_eq!(
            next(&mut events, Duration::from_secs(5)).await.event,
            "snapshot"
        );
        on_a.push(events);
    }
    let mut on_b = open(&app, "/api/v1/campaigns/b/stream", ADMIN_TOKEN, None).await;
    // A stream subscribes before its snapshot: every stream follows its topic.
    assert_eq!(
        next(&mut on_b, Duration::from_secs(5)).await.event,
        "snapshot"
    );

    // The registrations' own frames may still be on their way to the
    // topics (the fan-out thread takes them at its next window, and a busy
    // machine may run it late): a stream that subscribed meanwhile is woken
    // once for a frame its snapshot already holds. Let that settle first.
    settle(&app).await;

    // Act 1: nothing happens for a while: no stream is woken at all.
    let idle = Costs::read(&app).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let idle = Costs::read(&app).await.since(idle);
    assert_eq!(idle.wakeups, 0.0, "idle streams were woken: {idle:?}");

    // Act 2: thirty commits on B only.
    let before = Costs::read(&app).await;
    let changes: Vec<WaStatus<'_>> = refs
        .iter()
        .map(|id| (*id, "delivered", 1_700_000_000))
        .collect();
    commit_one_by_one(&app, &changes).await;
    let final_version = app.metrics("b").await["version"].as_i64().unwrap();
    until_counters(&mut on_b, "b", final_version).await;
    let spent = Costs::read(&app).await.since(before);

    // Assert: only B's stream was woken, at most once per window...
    assert!(spent.windows >= 1.0, "{spent:?}");
    assert!(
        spent.wakeups <= spent.windows,
        "{} wake-ups in {} windows with one stream following B: {spent:?}",
        spent.wakeups,
        spent.windows
    );
    // ...and A's streams got nothing (heartbeats are comments, not events).
    for events in &mut on_a {
        let got = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
        assert!(got.is_err(), "a stream of A got {got:?}");
    }
}

/// Twenty subscribers of one campaign (campaign and tenant streams, with
/// and without statuses) and forty commits: the campaign's counters are
/// encoded at most once per window (not once per commit, nor per
/// subscriber), each change once, each stream is woken at most once per
/// window, and every stream ends on the final counters.
#[actix_web::test]
async fn metrics_are_encoded_once_per_campaign_per_window_not_per_subscriber() {
    const WINDOW: Duration = Duration::from_millis(500);
    const COMMITS: usize = 40;
    let app = spawn_app_with(|settings| settings.sse_coalesce = WINDOW).await;
    let ids = message_ids("m", COMMITS);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c", &refs).await;
    let paths = [
        ("/api/v1/campaigns/c/stream", 8),
        ("/api/v1/campaigns/c/stream?include=statuses", 6),
        ("/api/v1/stream?tenant_id=t1", 3),
        ("/api/v1/stream?tenant_id=t1&include=statuses", 3),
    ];
    let mut streams: Vec<(&str, Events)> = Vec::new();
    for (path, count) in paths {
        for _ in 0..count {
            let mut events = open(&app, path, ADMIN_TOKEN, None).await;
            assert_eq!(
                next(&mut events, Duration::from_secs(5)).await.event,
                "snapshot"
            );
            streams.push((path, events));
        }
    }
    let subscribers = streams.len() as f64;
    wait_for_topics(&app, 2.0).await;

    // Act
    let before = Costs::read(&app).await;
    let started = Instant::now();
    let changes: Vec<WaStatus<'_>> = refs.iter().map(|id| (*id, "read", 1_700_000_000)).collect();
    commit_one_by_one(&app, &changes).await;
    let final_counters = app.metrics("c").await;
    let final_version = final_counters["version"].as_i64().unwrap();
    for (path, events) in &mut streams {
        let seen = until_counters(events, "c", final_version).await;
        assert_eq!(counters(seen.last().unwrap()), final_counters, "{path}");
        let statuses = seen.iter().filter(|event| event.event == "status").count();
        let expected = if path.contains("statuses") {
            COMMITS
        } else {
            0
        };
        assert_eq!(statuses, expected, "{path}: {seen:?}");
    }
    let elapsed = started.elapsed();
    let spent = Costs::read(&app).await.since(before);

    // Assert: the fan-out ran at most once per window...
    let windows_elapsed = elapsed.as_secs_f64() / WINDOW.as_secs_f64();
    assert!(
        spent.windows <= windows_elapsed.ceil() + 1.0,
        "{} fan-outs in {elapsed:?} of {WINDOW:?} windows",
        spent.windows
    );
    // ...encoded the campaign's counters at most once in each...
    assert!(
        spent.encoded_metrics <= spent.windows,
        "{} metrics encodings in {} windows: {spent:?}",
        spent.encoded_metrics,
        spent.windows
    );
    assert!(
        spent.encoded_metrics < COMMITS as f64,
        "encoded per commit: {spent:?}"
    );
    // ...each change once, for all nine status streams...
    assert_eq!(spent.encoded_statuses, COMMITS as f64, "{spent:?}");
    // ...and woke each stream at most once per window.
    assert!(
        spent.wakeups <= subscribers * spent.windows,
        "{} wake-ups of {subscribers} streams in {} windows",
        spent.wakeups,
        spent.windows
    );
}

/// Many subscribers of two campaigns, campaign and tenant streams, while
/// concurrent webhooks change both: every stream ends on the final
/// counters of what it follows, and every status stream gets each change
/// of what it follows exactly once, in order.
#[actix_web::test]
async fn many_subscribers_all_end_on_the_final_state_with_every_change_once() {
    const MESSAGES: usize = 60;
    let app = spawn_app().await;
    let campaigns = ["x", "y"];
    let mut all_ids = HashMap::new();
    for campaign in campaigns {
        let ids = message_ids(campaign, MESSAGES);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        app.register_whatsapp("t1", campaign, &refs).await;
        all_ids.insert(campaign, ids);
    }
    // 48 streams: per campaign 12 metrics and 8 status streams, and 4 + 4
    // tenant streams.
    let mut paths: Vec<String> = Vec::new();
    for campaign in campaigns {
        for n in 0..20 {
            let statuses = if n < 8 { "?include=statuses" } else { "" };
            paths.push(format!("/api/v1/campaigns/{campaign}/stream{statuses}"));
        }
    }
    for n in 0..8 {
        let statuses = if n < 4 { "&include=statuses" } else { "" };
        paths.push(format!("/api/v1/stream?tenant_id=t1{statuses}"));
    }
    let mut streams: Vec<(String, Events)> = Vec::new();
    for path in paths {
        let events = open(&app, &path, ADMIN_TOKEN, None).await;
        streams.push((path, events));
    }

    // Act: four rounds of statuses, each sent as concurrent calls of ten.
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for status in ["sent", "delivered", "read", "failed"] {
        let mut calls = Vec::new();
        for campaign in campaigns {
            let changes: Vec<WaStatus<'_>> = all_ids[campaign]
                .iter()
                .map(|id| (id.as_str(), status, 1_700_000_000))
                .collect();
            expected
                .entry(campaign)
                .or_default()
                .extend(all_ids[campaign].iter().map(|id| format!("{id}/{status}")));
            calls.extend(changes.chunks(10).map(<[WaStatus<'_>]>::to_vec));
        }
        let receipts =
            futures_util::future::join_all(calls.iter().map(|call| app.send_statuses(call))).await;
        for receipt in receipts {
            assert_eq!(receipt["applied"], 10, "{receipt}");
        }
    }
    let finals: HashMap<&str, Value> = {
        let mut finals = HashMap::new();
        for campaign in campaigns {
            finals.insert(campaign, app.metrics(campaign).await);
        }
        finals
    };

    // Assert
    for (path, events) in &mut streams {
        let followed: Vec<&str> = match campaigns.iter().find(|c| path.contains(&format!("/{c}/")))
        {
            Some(campaign) => vec![*campaign],
            None => campaigns.to_vec(),
        };
        let mut latest: HashMap<String, Value> = HashMap::new();
        let mut seen: Vec<Event> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while followed
            .iter()
            .any(|campaign| latest.get(*campaign) != Some(&finals[campaign]))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, events.next())
                .await
                .unwrap_or_else(|_| panic!("{path}: not at the final state after {seen:?}"))
                .expect("stream ended");
            if ["snapshot", "metrics"].contains(&event.event.as_str()) {
                let got = counters(&event);
                latest.insert(got["campaign_id"].as_str().unwrap().to_owned(), got);
            }
            seen.push(event);
        }
        if !path.contains("statuses") {
            assert!(seen.iter().all(|event| event.event != "status"), "{path}");
            continue;
        }
        for campaign in &followed {
            let changes: Vec<&Event> = seen
                .iter()
                .filter(|event| event.event == "status" && data(event)["campaign_id"] == *campaign)
                .collect();
            let got: Vec<String> = changes
                .iter()
                .map(|event| {
                    let change = data(event);
                    format!(
                        "{}/{}",
                        change["provider_message_id"].as_str().unwrap(),
                        change["event"].as_str().unwrap()
                    )
                })
                .collect();
            assert_eq!(
                got.iter().collect::<BTreeSet<_>>(),
                expected[campaign].iter().collect::<BTreeSet<_>>(),
                "{path}: the changes of {campaign}"
            );
            assert_eq!(got.len(), expected[campaign].len(), "{path}: each once");
            let versions: Vec<i64> = changes
                .iter()
                .map(|event| data(event)["version"].as_i64().unwrap())
                .collect();
            assert!(
                versions.windows(2).all(|pair| pair[0] < pair[1]),
                "{path}: {campaign}'s changes in order: {versions:?}"
            );
        }
        let ids: Vec<i64> = seen
            .iter()
            .filter(|event| event.event == "status")
            .map(|event| event.id.parse().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "{path}: ids only rise: {ids:?}"
        );
    }
}

/// A tenant stream follows the tenant, not the campaigns it had when it
/// opened: a campaign registered later reaches it, another tenant's never.
#[actix_web::test]
async fn a_tenant_stream_gets_campaigns_registered_after_it_opened() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "first", &["wamid.f1"]).await;
    app.register_whatsapp("t2", "theirs", &["wamid.o1"]).await;
    let token = app.tenant_token("t1", None);
    let mut events = open(&app, "/api/v1/stream?include=statuses", &token, None).await;
    assert_eq!(
        next(&mut events, Duration::from_secs(5)).await.event,
        "snapshot"
    );

    app.register_whatsapp("t1", "later", &["wamid.l1"]).await;
    app.send_statuses(&[
        ("wamid.o1", "read", 1_700_000_000),
        ("wamid.l1", "delivered", 1_700_000_001),
    ])
    .await;
    let final_version = app.metrics("later").await["version"].as_i64().unwrap();

    let seen = until_counters(&mut events, "later", final_version).await;
    let statuses: Vec<Value> = seen
        .iter()
        .filter(|event| event.event == "status")
        .map(data)
        .collect();
    assert_eq!(statuses.len(), 1, "{seen:?}");
    assert_eq!(statuses[0]["provider_message_id"], "wamid.l1");
    assert!(
        seen.iter().all(|event| data(event)["tenant_id"] == "t1"),
        "{seen:?}"
    );
}

/// Topics exist only while someone follows them: however many campaigns
/// were followed, none is left once their streams are gone.
#[actix_web::test]
async fn a_topic_goes_with_its_last_subscriber() {
    // The hub notices a client has gone when it next writes to it: a
    // heartbeat every second makes that quick.
    let app = spawn_app_with(|settings| settings.sse_heartbeat = Duration::from_secs(1)).await;
    let campaigns: Vec<String> = (0..5).map(|c| format!("c{c}")).collect();
    for campaign in &campaigns {
        app.register_whatsapp("t1", campaign, &[&format!("wamid.{campaign}")])
            .await;
    }
    let mut streams = Vec::new();
    for campaign in &campaigns {
        for include in ["", "?include=statuses"] {
            let path = format!("/api/v1/campaigns/{campaign}/stream{include}");
            let mut events = open(&app, &path, ADMIN_TOKEN, None).await;
            next(&mut events, Duration::from_secs(5)).await;
            streams.push(events);
        }
    }
    let mut tenant = open(&app, "/api/v1/stream?tenant_id=t1", ADMIN_TOKEN, None).await;
    next(&mut tenant, Duration::from_secs(5)).await;
    let mut everything = open(&app, "/api/v1/stream", ADMIN_TOKEN, None).await;
    next(&mut everything, Duration::from_secs(5)).await;
    wait_for_topics(&app, 7.0).await;

    // Half the streams of each campaign leave: their topics stay.
    streams.retain({
        let mut n = 0;
        move |_| {
            n += 1;
            n % 2 == 0
        }
    });
    drop(tenant);
    wait_for_topics(&app, 6.0).await;
    // A change still reaches the remaining status streams.
    app.send_statuses(&[("wamid.c0", "read", 1_700_000_000)])
        .await;
    let seen = take_events(&mut streams[0], 2).await;
    assert_eq!(
        seen.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["status", "metrics"]
    );

    drop(streams);
    drop(everything);
    wait_for_topics(&app, 0.0).await;
}

async fn take_events(events: &mut Events, count: usize) -> Vec<Event> {
    let mut seen = Vec::new();
    for _ in 0..count {
        seen.push(next(events, Duration::from_secs(5)).await);
    }
    seen
}

/// Writes that reach the SQLite writer while it commits share its next
/// transaction (`src/store/sqlite/writer.rs`), whose changes all carry the
/// counters of its end. A stream still gets that transaction as one commit:
/// every change once, in version order, even when the fan-out runs between
/// two batches of it (no coalescing window here, so it runs as often as it
/// can). Published batch by batch, a stream sent the first batch's change
/// with the transaction's final metrics, then took the next batch's change
/// as already covered.
#[actix_web::test]
async fn changes_of_writes_committed_together_reach_a_stream_in_order_once() {
    const ROUNDS: usize = 3;
    const CONCURRENT: usize = 64;
    let app = spawn_app_with(|settings| settings.sse_coalesce = Duration::ZERO).await;
    let ids = message_ids("c", CONCURRENT);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c", &refs).await;
    let mut events = open(
        &app,
        "/api/v1/campaigns/c/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    )
    .await;

    let stages = ["sent", "delivered", "read"];
    let mut expected = BTreeSet::new();
    for round in 0..ROUNDS {
        let status = stages[round % stages.len()];
        let timestamp = 1_700_000_000 + round as i64;
        let calls: Vec<Vec<WaStatus<'_>>> = refs
            .iter()
            .map(|id| vec![(*id, status, timestamp)])
            .collect();
        let receipts =
            futures_util::future::join_all(calls.iter().map(|call| app.send_statuses(call))).await;
        for (receipt, id) in receipts.iter().zip(&refs) {
            if receipt["applied"] == 1 && receipt["duplicates"] == 0 {
                expected.insert(format!("{id}/{status}"));
            }
        }
    }

    let mut got: Vec<(i64, String)> = Vec::new();
    let seen = collect_until(&mut events, Duration::from_secs(30), |event| {
        if event.event == "status" {
            let change = data(event);
            got.push((
                change["version"].as_i64().unwrap(),
                format!(
                    "{}/{}",
                    change["provider_message_id"].as_str().unwrap(),
                    change["event"].as_str().unwrap()
                ),
            ));
        }
        got.len() >= expected.len()
    })
    .await;
    let names: BTreeSet<String> = got.iter().map(|(_, name)| name.clone()).collect();
    assert_eq!(names, expected, "every change, from {} events", seen.len());
    assert_eq!(got.len(), expected.len(), "each once: {got:?}");
    assert!(
        got.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "in version order: {got:?}"
    );
}
