//! Readers that do not keep up: a stalled status subscriber is cut off, a
//! slow metrics subscriber skips to the latest counters, and a commit larger
//! than a connection's buffer still reaches a subscriber that reads.

use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::StreamExt as _;
use serde_json::Value;

use super::{Events, Recorder, collect_until, counters, data, next, open};
use crate::helpers::*;

/// A stream read straight off a socket with a small receive buffer, so that
/// the test decides when, and whether, the client reads.
struct RawStream {
    socket: tokio::net::TcpStream,
    /// The receive buffer the kernel granted.
    recv_buffer: usize,
}

/// The receive buffer of a [`RawStream`], fixed before it connects (the
/// kernel never grows it), so that the data a stalled stream holds is known.
///
/// Not smaller: with a buffer of a few KiB the connection gets no window
/// scaling, the client's window stays below one loopback segment, and once
/// the client reads again after a long stall the kernel may not announce
/// the window: the hub's side then sends only on its zero-window probes.
/// Seen with 4 KiB: a backlog of 2.7 MB trickling at 9 KB/s for minutes,
/// both processes idle, and a test that timed out about one run in four
/// with four running at once.
const RECV_BUFFER: usize = 256 << 10;

impl RawStream {
    /// Sends the request for `path` as the admin, and reads nothing yet.
    async fn open(app: &TestApp, path: &str) -> RawStream {
        use std::io::Write as _;
        let address: std::net::SocketAddr =
            app.address.trim_start_matches("http://").parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(RECV_BUFFER).unwrap();
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
    assert_eq!(super::counters(received.last().unwrap()), final_counters);
    let last_counters = loop {
        let (_, event) = counters.next(Duration::from_secs(10)).await;
        assert_eq!(event.event, "metrics");
        if data(&event)["version"] == final_version {
            break super::counters(&event);
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
    // Counted, for the alert on lagging subscribers.
    let lagged = app
        .scrape(r#"statushub_sse_lagged_total{reason="slow_client"}"#)
        .await
        + app
            .scrape(r#"statushub_sse_lagged_total{reason="missed_changes"}"#)
            .await;
    assert_eq!(lagged, 1.0);
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
    // Generous: on a loaded machine (the whole suite on PostgreSQL) the
    // backlog takes a while to read; what is checked is where it ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    while latest != finals {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| {
                let behind: Vec<_> = finals
                    .iter()
                    .filter(|(c, f)| latest.get(*c) != Some(f))
                    .collect();
                let example = behind.first().map(|(campaign, wanted)| {
                    format!("{campaign}: got {:?}, wanted {wanted}", latest.get(*campaign))
                });
                panic!(
                    "after {count} events, {} campaigns are not at their final counters ({example:?})",
                    behind.len()
                )
            })
            .expect("the slow subscriber was disconnected");
        count += 1;
        assert!(
            ["snapshot", "metrics"].contains(&event.event.as_str()),
            "{event:?} after {count} events"
        );
        let got = counters(&event);
        latest.insert(got["campaign_id"].as_str().unwrap().to_owned(), got);
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
    assert_eq!(counters(&event), app.metrics("c0").await);
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
