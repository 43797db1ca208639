//! Live streams over real HTTP, read with a real SSE parser.

use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;

use crate::helpers::*;

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Opens a stream at `path` with `token`, optionally resuming after `last_id`.
async fn open(app: &TestApp, path: &str, token: &str, last_id: Option<&str>) -> Events {
    let mut request = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(3600));
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.unwrap()),
    )
}

/// Returns the next event, failing after `within`.
async fn next(events: &mut Events, within: Duration) -> Event {
    tokio::time::timeout(within, events.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

/// Reads events until `done` says so, or fails after `within`.
async fn collect_until(
    events: &mut Events,
    within: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} events: {:?}", seen.len(), seen.last()))
            .expect("stream ended");
        let stop = done(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// Returns the next `count` events.
async fn take(events: &mut Events, count: usize) -> Vec<Event> {
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count {
        seen.push(next(events, Duration::from_secs(5)).await);
    }
    seen
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|event| event.event.as_str()).collect()
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

fn ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("wamid.s{i}")).collect()
}

/// Events of a stream read on a thread of its own, so that the test's work
/// never delays them, each with the instant it arrived.
struct Recorder {
    events: tokio::sync::mpsc::UnboundedReceiver<(Instant, Event)>,
}

impl Recorder {
    /// Opens `path` with `token` and records its events until the stream
    /// ends or the recorder is dropped.
    fn start(app: &TestApp, path: &str, token: &str) -> Recorder {
        let url = app.url(path);
        let token = token.to_owned();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let response = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut events = response.bytes_stream().eventsource();
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        event = events.next() => match event {
                            Some(event) => {
                                let _ = tx.send((Instant::now(), event.unwrap()));
                            }
                            None => return,
                        },
                    }
                }
            });
        });
        Recorder { events: rx }
    }

    /// Returns the next event and when it arrived, failing after `within`.
    async fn next(&mut self, within: Duration) -> (Instant, Event) {
        tokio::time::timeout(within, self.events.recv())
            .await
            .expect("no event in time")
            .expect("stream ended")
    }

    /// Returns what arrived so far without waiting.
    fn drain(&mut self) -> Vec<(Instant, Event)> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}

/// A stream read straight off a socket with a small receive buffer, so that
/// the test decides when, and whether, the client reads.
struct RawStream {
    socket: tokio::net::TcpStream,
    /// The receive buffer the kernel granted.
    recv_buffer: usize,
}

impl RawStream {
    /// Sends the request for `path` as the admin, and reads nothing yet.
    async fn open(app: &TestApp, path: &str) -> RawStream {
        use std::io::Write as _;
        let address: std::net::SocketAddr =
            app.address.trim_start_matches("http://").parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&address.into()).unwrap();
        let recv_buffer = socket.recv_buffer_size().unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
        )
        .unwrap();
        stream.set_nonblocking(true).unwrap();
        RawStream {
            socket: tokio::net::TcpStream::from_std(stream).unwrap(),
            recv_buffer,
        }
    }

    /// Returns about how many bytes of events of `event_len` bytes the
    /// kernel and the hub may hold for this connection while it does not
    /// read: the hub's socket send buffer at its largest, this socket's
    /// receive buffer, the HTTP layer's write buffer, and the hub's queue of
    /// events per connection.
    fn can_hold(&self, event_len: usize) -> usize {
        const HTTP_WRITE_BUFFER: usize = 64 * 1024;
        const CONNECTION_QUEUE: usize = 256;
        kernel_send_buffer_max()
            + self.recv_buffer
            + HTTP_WRITE_BUFFER
            + CONNECTION_QUEUE * event_len
    }

    /// Starts reading: the SSE events of the chunked response body; the
    /// stream ends with the body.
    fn events(self) -> Events {
        fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
            haystack
                .windows(needle.len())
                .position(|window| window == needle)
        }
        let chunks = futures_util::stream::unfold(
            Some((self.socket, Vec::<u8>::new(), false)),
            |state| async move {
                use tokio::io::AsyncReadExt as _;
                let (mut socket, mut buffer, mut in_body) = state?;
                loop {
                    if !in_body {
                        if let Some(end) = find(&buffer, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            assert!(head.starts_with("http/1.1 200"), "{head}");
                            assert!(head.contains("transfer-encoding: chunked"), "{head}");
                            buffer.drain(..end + 4);
                            in_body = true;
                            continue;
                        }
                    } else if let Some(line_end) = find(&buffer, b"\r\n") {
                        let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
                        let size =
                            usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                        if size == 0 {
                            return None;
                        }
                        let start = line_end + 2;
                        if buffer.len() >= start + size + 2 {
                            let chunk = buffer[start..start + size].to_vec();
                            buffer.drain(..start + size + 2);
                            let state = Some((socket, buffer, in_body));
                            return Some((Ok::<_, std::io::Error>(chunk), state));
                        }
                    }
                    let mut read = vec![0; 64 * 1024];
                    let n = socket.read(&mut read).await.unwrap();
                    if n == 0 {
                        return None;
                    }
                    buffer.extend_from_slice(&read[..n]);
                }
            },
        );
        Box::pin(chunks.eventsource().map(|event| event.unwrap()))
    }
}

/// Returns the most a TCP socket's send buffer may grow to (Linux's
/// `tcp_wmem` maximum): what the hub's side of a stalled connection may
/// absorb.
fn kernel_send_buffer_max() -> usize {
    let path = "/proc/sys/net/ipv4/tcp_wmem";
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("this test sizes its data from {path} (Linux): {error}"));
    text.split_whitespace()
        .nth(2)
        .and_then(|max| max.parse().ok())
        .unwrap_or_else(|| panic!("{path} holds no maximum: {text:?}"))
}

/// Returns the number of open streams the hub reports in `/metrics`.
async fn open_streams(app: &TestApp) -> i64 {
    let text = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("statushub_sse_streams ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("statushub_sse_streams not in /metrics:\n{text}"))
}

/// Waits until the hub reports `count` open streams.
async fn wait_for_open_streams(app: &TestApp, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_streams(app).await;
        if open == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} streams open, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    assert_eq!(data(&first), expected);
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
    // Arrival times can bunch by a scheduling delay of the reading thread.
    const TOLERANCE: Duration = Duration::from_millis(100);
    let app = spawn_app_with(|settings| settings.sse_coalesce = WINDOW).await;
    let ids = ids(200);
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
        metrics.push((at, data(&event)));
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
    // Arrival times can bunch by a scheduling delay of the reader.
    const TOLERANCE: Duration = Duration::from_millis(150);
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
    assert_eq!(data(&seen[1]), app.metrics("c1").await);
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
    assert_eq!(data(&seen[0]), now);
    assert_eq!(data(&seen[1]), app.metrics("c1").await);
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
    assert_eq!(data(&snapshot), now);
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

/// A status subscriber that stops reading is cut off with `event: lagged`
/// once what the kernel and the hub hold for it is full; meanwhile every
/// webhook gets its 200 and the subscribers that read get every change.
#[actix_web::test]
async fn a_stalled_reader_delays_neither_webhooks_nor_other_subscribers() {
    // Arrange: a status subscriber that never reads, and two that do.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.first"]).await;
    let path = "/api/v1/campaigns/c1/stream?include=statuses";
    let stalled = RawStream::open(&app, path).await;
    let mut statuses = Recorder::start(&app, path, ADMIN_TOKEN);
    let mut counters = Recorder::start(&app, "/api/v1/campaigns/c1/stream", ADMIN_TOKEN);
    assert_eq!(
        statuses.next(Duration::from_secs(5)).await.1.event,
        "snapshot"
    );
    assert_eq!(
        counters.next(Duration::from_secs(5)).await.1.event,
        "snapshot"
    );
    wait_for_open_streams(&app, 3).await;
    let can_hold = stalled.can_hold(300);

    // Act: rounds of changes (small calls, so no single commit outgrows a
    // subscriber's queue) until the hub reports the stalled stream closed.
    let mut applied = 0;
    let mut streamed = 0;
    let mut received: Vec<Event> = Vec::new();
    for round in 0.. {
        if open_streams(&app).await < 3 {
            break;
        }
        assert!(
            streamed < 4 * can_hold,
            "the stalled stream is still open after {streamed} bytes of status events \
             (the kernel and the hub can hold about {can_hold} for it)"
        );
        let ids: Vec<String> = (0..500).map(|i| format!("wamid.r{round}.{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        app.register_whatsapp("t1", "c1", &refs).await;
        for status in ["sent", "delivered", "read", "failed"] {
            let changes: Vec<WaStatus<'_>> =
                refs.iter().map(|id| (*id, status, 1_700_000_000)).collect();
            for calls in changes.chunks(50).collect::<Vec<_>>().chunks(2) {
                let receipts = futures_util::future::join_all(
                    calls.iter().map(|call| app.send_statuses(call)),
                )
                .await;
                applied += receipts
                    .iter()
                    .map(|receipt| receipt["applied"].as_i64().unwrap())
                    .sum::<i64>();
            }
        }
        for (_, event) in statuses.drain() {
            streamed += event.data.len() + event.id.len() + "event: status\nid: \ndata: \n\n".len();
            received.push(event);
        }
    }
    let final_counters = app.metrics("c1").await;
    let final_version = final_counters["version"].as_i64().unwrap();

    // Assert: the subscribers that read got every change and the final counters...
    while received
        .last()
        .is_none_or(|event| event.event != "metrics" || data(event)["version"] != final_version)
    {
        received.push(statuses.next(Duration::from_secs(10)).await.1);
    }
    let changes: Vec<i64> = received
        .iter()
        .filter(|event| event.event == "status")
        .map(|event| event.id.parse().unwrap())
        .collect();
    assert_eq!(changes.len() as i64, applied, "{} events", received.len());
    assert!(changes.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(data(received.last().unwrap()), final_counters);
    let last_counters = loop {
        let (_, event) = counters.next(Duration::from_secs(10)).await;
        assert_eq!(event.event, "metrics");
        if data(&event)["version"] == final_version {
            break data(&event);
        }
    };
    assert_eq!(last_counters, final_counters);

    // ...and the stalled one, once it reads, finds its stream ended with
    // `event: lagged` after part of the changes.
    let mut events = stalled.events();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("the stalled stream neither ended nor sent anything")
    {
        seen.push(event);
    }
    assert_eq!(
        seen.first().map(|event| event.event.as_str()),
        Some("snapshot")
    );
    assert_eq!(
        seen.last().map(|event| event.event.as_str()),
        Some("lagged"),
        "{} events",
        seen.len()
    );
    let stalled_changes = seen.iter().filter(|event| event.event == "status").count();
    assert!(stalled_changes < changes.len());
}

/// While a metrics-only subscriber does not read, its queue fills and the
/// hub keeps only the latest counters per campaign for it: once it reads
/// again it ends on the final counters of every campaign, and it is never
/// cut off.
#[actix_web::test]
async fn a_slow_metrics_subscriber_skips_to_the_latest_counters_and_stays_connected() {
    const CAMPAIGNS: usize = 200;
    const STATUSES: [&str; 4] = ["sent", "delivered", "read", "failed"];
    // Arrange: many campaigns, each commit changing all of them, coalescing
    // short, so the stream carries many metrics events.
    let app = spawn_app_with(|settings| {
        settings.sse_coalesce = Duration::from_millis(1);
        // Durability is not what this test checks: no fsync per commit.
        settings.sqlite_synchronous = statushub::config::SqliteSynchronous::Normal;
    })
    .await;
    let campaigns: Vec<String> = (0..CAMPAIGNS).map(|c| format!("c{c}")).collect();
    app.register_whatsapp("t1", &campaigns[0], &["wamid.c0.probe"])
        .await;
    let event_len = serde_json::to_string(&app.metrics("c0").await)
        .unwrap()
        .len()
        + "event: metrics\nid: 000000\ndata: \n\n".len();
    // Enough rounds (one change per campaign each) to stream one and a half
    // times what the kernel and the hub can hold for a stalled connection.
    let stalled = RawStream::open(&app, "/api/v1/stream?tenant_id=t1").await;
    wait_for_open_streams(&app, 1).await;
    let rounds = (3 * stalled.can_hold(event_len) / 2).div_ceil(CAMPAIGNS * event_len);
    let per_campaign = rounds.div_ceil(STATUSES.len());
    let registrations: Vec<Value> = campaigns
        .iter()
        .flat_map(|campaign| {
            (0..per_campaign).map(move |m| {
                serde_json::json!({"tenant_id": "t1", "campaign_id": campaign, "channel": "whatsapp",
                                   "provider_message_id": format!("wamid.{campaign}.{m}")})
            })
        })
        .collect();
    app.register(&Value::Array(registrations)).await;

    // Act: the rounds, while the subscriber does not read.
    for round in 0..rounds {
        let ids: Vec<String> = campaigns
            .iter()
            .map(|campaign| format!("wamid.{campaign}.{}", round / STATUSES.len()))
            .collect();
        let changes: Vec<WaStatus<'_>> = ids
            .iter()
            .map(|id| (id.as_str(), STATUSES[round % STATUSES.len()], 1_700_000_000))
            .collect();
        assert_eq!(app.send_statuses(&changes).await["applied"], CAMPAIGNS);
    }
    let mut finals = std::collections::HashMap::new();
    for campaign in &campaigns {
        finals.insert(campaign.clone(), app.metrics(campaign).await);
    }

    // Assert: reading again, it gets to the final counters of every
    // campaign, and nothing tells it to reset or that it lagged...
    let mut events = stalled.events();
    let mut latest: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest != finals {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| {
                let behind = finals
                    .iter()
                    .filter(|(c, f)| latest.get(*c) != Some(f))
                    .count();
                panic!("after {count} events, {behind} campaigns are not at their final counters")
            })
            .expect("the slow subscriber was disconnected");
        count += 1;
        assert!(
            ["snapshot", "metrics"].contains(&event.event.as_str()),
            "{event:?} after {count} events"
        );
        let counters = data(&event);
        latest.insert(
            counters["campaign_id"].as_str().unwrap().to_owned(),
            counters,
        );
    }
    // ...having skipped some: it got fewer events than the commits made
    // (a metrics event per campaign each round, and the registration).
    assert!(
        count < rounds * CAMPAIGNS,
        "{count} events: the hub buffered every update for a client that did not read"
    );

    // ...and it is still connected: the next change reaches it.
    app.send_statuses(&[("wamid.c0.probe", "read", 1_700_000_000)])
        .await;
    let event = next(&mut events, Duration::from_secs(10)).await;
    assert_eq!(event.event, "metrics");
    assert_eq!(data(&event), app.metrics("c0").await);
}

/// A stream opened shortly before its token expires ends at the expiry, after
/// `event: expired`, and carries nothing committed later.
#[actix_web::test]
async fn a_stream_ends_when_its_token_expires() {
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.0", "wamid.1"])
        .await;
    let token = authenticator()
        .mint("t1", None, Duration::from_secs(2))
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

/// A commit with more changes than a connection's buffer holds (one call
/// of 600 statuses) reaches a status subscriber that reads: it waits for
/// room instead of calling the client slow.
#[actix_web::test]
async fn a_commit_larger_than_the_connection_buffer_reaches_a_reading_subscriber() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..600).map(|i| format!("wamid.big{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs).await;
    let mut events = open(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        next(&mut events, Duration::from_secs(5)).await.event,
        "snapshot"
    );

    let statuses: Vec<WaStatus<'_>> = refs
        .iter()
        .map(|id| (*id, "delivered", 1_700_000_000))
        .collect();
    let receipt = app.send_statuses(&statuses).await;
    assert_eq!(receipt["applied"], 600);

    let mut seen = 0;
    let received = collect_until(&mut events, Duration::from_secs(30), |event| {
        assert_ne!(
            event.event, "lagged",
            "a reading subscriber was called slow"
        );
        if event.event == "status" {
            seen += 1;
        }
        seen == 600
    })
    .await;
    assert!(received.iter().all(|event| event.event != "lagged"));
}
