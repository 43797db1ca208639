//! `kill -9` while webhooks are in flight loses no acknowledged status, and a
//! restart recovers the counters exactly, as the restarted hub's API shows.
//! Every wait has a hang guard, and the hub process dies with the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Longest any one wait of this test may take: a hang guard, not a bound on speed.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A running statushub process, killed (SIGKILL) and reaped when dropped,
/// so that a failing test leaves no server behind.
struct Hub(Child);

impl Hub {
    /// `kill -9`, then waits for the process to be gone.
    fn kill_9(mut self) {
        self.0.kill().expect("kill -9 failed");
        self.0.wait().unwrap();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary on `port` with its database in `dir`.
fn start_hub(dir: &Path, port: u16) -> Hub {
    let child = Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("serve")
        .env("STATUSHUB_BIND", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("hub.db").display()),
        )
        .env("STATUSHUB_DATA_DIR", dir.join("data"))
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
        .env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start the statushub binary");
    Hub(child)
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

#[actix_web::test]
async fn kill_9_loses_no_acknowledged_status() {
    // Arrange: a real process with 300 registered messages. Every request
    // has a deadline.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let hub = start_hub(dir.path(), port);
    wait_until_ready(&client, &base).await;
    let ids: Vec<String> = (0..300).map(|i| format!("wamid.dur{i}")).collect();
    let registrations: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| serde_json::json!({"tenant_id": "t1", "campaign_id": "durable", "channel": "whatsapp", "provider_message_id": id}))
        .collect();
    let response = client
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&registrations)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Act: 24 concurrent senders; kill -9 once 400 calls were acknowledged.
    // Each sender stops at its first failed call (the server is gone).
    let acknowledged: Arc<Mutex<BTreeSet<(String, &str)>>> = Arc::default();
    let statuses = ["sent", "delivered", "read", "failed"];
    let senders = (0..24).map(|sender| {
        let client = client.clone();
        let base = base.clone();
        let ids = ids.clone();
        let acknowledged = acknowledged.clone();
        async move {
            for round in 0.. {
                let id = &ids[(sender * 13 + round * 7) % ids.len()];
                let status = statuses[(sender + round) % statuses.len()];
                let body = serde_json::to_vec(&whatsapp_payload(&[(
                    id,
                    status,
                    1_700_000_000 + round as i64,
                )]))
                .unwrap();
                let signature = statushub::webhooks::whatsapp::signature::sign(
                    WHATSAPP_SECRET.as_bytes(),
                    &body,
                );
                let sent = client
                    .post(format!("{base}/webhooks/whatsapp"))
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        acknowledged.lock().unwrap().insert((id.clone(), status));
                    }
                    _ => return,
                }
            }
        }
    });
    let killer = {
        let acknowledged = acknowledged.clone();
        async move {
            let started = Instant::now();
            loop {
                let count = acknowledged.lock().unwrap().len();
                if count >= 400 {
                    break;
                }
                assert!(
                    started.elapsed() < HANG_GUARD,
                    "only {count} calls acknowledged in {HANG_GUARD:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            hub.kill_9();
        }
    };
    futures_util::join!(futures_util::future::join_all(senders), killer);
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 100,
        "the test acknowledged too little to mean anything"
    );

    // Restart on the same file.
    let hub = start_hub(dir.path(), port);
    wait_until_ready(&client, &base).await;

    // Assert: the restarted hub shows every acknowledged status of every
    // message...
    let mut by_message: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, status) in &acknowledged {
        by_message.entry(id).or_default().push(status);
    }
    let mut lost = Vec::new();
    for (id, statuses) in &by_message {
        let response = client
            .get(format!("{base}/api/v1/messages/whatsapp/{id}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{id}");
        let message: serde_json::Value = response.json().await.unwrap();
        let seen: BTreeSet<&str> = message["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|seen| seen["status"].as_str().unwrap())
            .collect();
        let timeline: BTreeSet<&str> = message["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["event"].as_str().unwrap())
            .collect();
        for status in statuses {
            if !seen.contains(status) || !timeline.contains(status) {
                lost.push(format!("{id}:{status}"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged statuses lost, such as {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );

    // ...and its counters equal a recount of the stored messages.
    let response = client
        .get(format!("{base}/api/v1/campaigns/durable/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        counts_only(&metrics),
        sql_counts(&dir.path().join("hub.db"), "durable").await
    );
    assert_eq!(metrics["total"], 300);
    hub.kill_9();
}
