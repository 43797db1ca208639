//! SIGTERM under load, on the real binary: the process exits 0 within the
//! documented bound, every webhook answered 200 is in the store, calls after
//! the signal get 503 or a refused connection, and SSE clients get `event:
//! shutdown` with `retry:` before their streams end. Runs on the backend
//! `STATUSHUB_TEST_BACKEND` names. Every wait has a hang guard, and the hub
//! process dies with the test.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::StreamExt as _;

use crate::helpers::*;

/// Longest any one wait of this test may take: a hang guard.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// What the README promises: the server's 10 s for requests in flight,
/// then 5 s for the last commits.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// A running statushub process, killed and reaped when dropped.
struct Hub(Child);

impl Hub {
    /// Starts the real binary on `port` over the database at `url`, its
    /// log in `dir`.
    fn start(dir: &Path, port: u16, url: &str) -> Hub {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hub.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_statushub"))
            .arg("serve")
            .env("STATUSHUB_BIND", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", url)
            .env("STATUSHUB_DATA_DIR", dir.join("data"))
            .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
            .env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
            .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("failed to start the statushub binary");
        Hub(child)
    }

    /// Sends SIGTERM, as an orchestrator does.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("failed to run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`; returns its status
    /// and how long it took.
    async fn exited(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + HANG_GUARD;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("statushub did not become ready at {base}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Posts one signed WhatsApp status.
async fn post_status(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
    ts: i64,
) -> reqwest::Result<reqwest::Response> {
    let body = serde_json::to_vec(&whatsapp_payload(&[(id, status, ts)])).unwrap();
    let signature =
        statushub::webhooks::whatsapp::signature::sign(WHATSAPP_SECRET.as_bytes(), &body);
    client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
}

/// What the calls made after the signal got.
#[derive(Debug, Default)]
struct AfterSignal {
    acknowledged: AtomicUsize,
    unavailable: AtomicUsize,
    refused: AtomicUsize,
}

#[actix_web::test]
async fn sigterm_under_load_exits_0_in_time_losing_no_acknowledged_webhook() {
    // Arrange: the real binary with 300 registered messages, three SSE
    // clients, and a log to read if something goes wrong.
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh_in(dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut hub = Hub::start(dir.path(), port, &db.url());
    wait_until_ready(&client, &base).await;
    let ids: Vec<String> = (0..300).map(|i| format!("wamid.term{i}")).collect();
    let registrations: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"tenant_id": "t1", "campaign_id": "drain", "channel": "whatsapp", "provider_message_id": id}))
        .collect();
    let response = client
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&registrations)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut streams = Vec::new();
    for path in [
        "/api/v1/campaigns/drain/stream",
        "/api/v1/campaigns/drain/stream?include=statuses",
        "/api/v1/stream",
    ] {
        let response = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["connection"],
            "close",
            "{path}: a stream's connection closes when it ends"
        );
        streams.push(response.bytes_stream().eventsource());
    }

    // Act: 16 concurrent senders, each until its connection is refused;
    // SIGTERM once 300 calls were acknowledged. A prober opens a fresh
    // connection for each call after the signal.
    let acknowledged: Arc<Mutex<BTreeSet<(String, &str)>>> = Arc::default();
    let signalled = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AfterSignal::default());
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let statuses = ["sent", "delivered", "read", "failed"];
    let record = {
        let acknowledged = acknowledged.clone();
        let signalled = signalled.clone();
        let after = after.clone();
        let unexpected = unexpected.clone();
        move |id: &str, status: &'static str, sent: reqwest::Result<reqwest::Response>| {
            let late = signalled.load(Ordering::SeqCst);
            match sent.map(|response| response.status().as_u16()) {
                Ok(200) => {
                    acknowledged.lock().unwrap().insert((id.to_owned(), status));
                    if late {
                        after.acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    true
                }
                Ok(503) if late => {
                    after.unavailable.fetch_add(1, Ordering::SeqCst);
                    true
                }
                Ok(code) => {
                    unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{id}:{status}: {code}"));
                    false
                }
                Err(error) if late => {
                    after.refused.fetch_add(1, Ordering::SeqCst);
                    assert!(!error.is_timeout(), "a call hung: {error}");
                    false
                }
                Err(error) => {
                    unexpected
                        .lock()
                        .unwrap()
                        .push(format!("{id}:{status}: {error}"));
                    false
                }
            }
        }
    };
    let senders = (0..16).map(|sender| {
        let client = client.clone();
        let base = base.clone();
        let ids = ids.clone();
        let record = record.clone();
        async move {
            for round in 0.. {
                let id = &ids[(sender * 19 + round * 7) % ids.len()];
                let status = statuses[(sender + round) % statuses.len()];
                let sent =
                    post_status(&client, &base, id, status, 1_700_000_000 + round as i64).await;
                if !record(id, status, sent) {
                    return;
                }
            }
        }
    });
    let prober = {
        let signalled = signalled.clone();
        let base = base.clone();
        let ids = ids.clone();
        let record = record.clone();
        async move {
            while !signalled.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for round in 0.. {
                let fresh = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let id = &ids[round % ids.len()];
                let sent = post_status(&fresh, &base, id, "delivered", 1_700_000_000).await;
                if !record(id, "delivered", sent) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let signal_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killer = {
        let acknowledged = acknowledged.clone();
        let signalled = signalled.clone();
        let signal_at = signal_at.clone();
        let hub = &hub;
        async move {
            let started = Instant::now();
            while acknowledged.lock().unwrap().len() < 300 {
                assert!(started.elapsed() < HANG_GUARD, "too few calls acknowledged");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            signalled.store(true, Ordering::SeqCst);
            *signal_at.lock().unwrap() = Some(Instant::now());
            hub.terminate();
        }
    };
    let readers = streams.into_iter().map(|mut events| async move {
        let mut seen: Vec<Event> = Vec::new();
        loop {
            match tokio::time::timeout(HANG_GUARD, events.next()).await {
                Ok(Some(Ok(event))) => seen.push(event),
                Ok(Some(Err(error))) => panic!("stream failed after {seen:?}: {error}"),
                Ok(None) => return seen,
                Err(_) => panic!("stream did not end after {} events", seen.len()),
            }
        }
    });
    let (_, _, _, read) = futures_util::join!(
        futures_util::future::join_all(senders),
        prober,
        killer,
        futures_util::future::join_all(readers)
    );
    let (status, took) = hub
        .exited(HANG_GUARD)
        .await
        .expect("statushub did not exit after SIGTERM");
    let since_signal = signal_at.lock().unwrap().unwrap().elapsed();
    let log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();

    // Assert: exit 0, in time.
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(
        since_signal <= EXIT_BOUND + Duration::from_secs(1),
        "exited {since_signal:?} after SIGTERM (waited {took:?} after the load stopped)\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
    // Every answer was 200, 503 after the signal, or a refused connection
    // after it; calls went on until the listener refused them.
    assert_eq!(
        unexpected.lock().unwrap().clone(),
        Vec::<String>::new(),
        "{log}"
    );
    assert!(
        after.refused.load(Ordering::SeqCst) >= 16,
        "every sender ends on a refused connection: {after:?}"
    );
    println!("after the signal: {after:?}; exited {since_signal:?} after it");
    // Every SSE client got the final event with its retry hint, and its
    // stream ended.
    for events in &read {
        let names: Vec<&str> = events.iter().map(|event| event.event.as_str()).collect();
        assert!(names.contains(&"snapshot"), "{names:?}");
        let last = events.last().unwrap();
        assert_eq!(last.event, "shutdown", "{names:?}");
        assert_eq!(last.retry, Some(Duration::from_secs(1)), "{last:?}");
        assert!(last.data.contains("shutting down"), "{last:?}");
    }

    // Every acknowledged status is in the store, and the stored counters
    // equal a recount of the messages.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let stored: BTreeSet<(String, String)> = db
        .fetch(
            "SELECT m.provider_message_id AS id, e.event AS event
             FROM status_events e JOIN messages m ON m.id = e.message_pk",
            &[],
        )
        .await
        .iter()
        .map(|row| (row["id"].text().to_owned(), row["event"].text().to_owned()))
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(id, status)| !stored.contains(&(id.clone(), (*status).to_owned())))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged statuses lost, such as {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    let counts = db.recount("drain").await.checked("drain");

    // A restarted hub serves exactly those counters, and stops soon when
    // idle: once the test client's idle keep-alive connection reaches its
    // keep-alive timeout (5 s), checked by the server each second.
    let mut hub = Hub::start(dir.path(), port, &db.url());
    wait_until_ready(&client, &base).await;
    let metrics: serde_json::Value = client
        .get(format!("{base}/api/v1/campaigns/drain/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts_only(&metrics), counts);
    hub.terminate();
    let (status, took) = hub.exited(HANG_GUARD).await.expect("no exit when idle");
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(7),
        "an idle hub took {took:?} to stop"
    );
}
