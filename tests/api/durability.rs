//! `kill -9` while webhooks are in flight loses no acknowledged status, and a
//! restart recovers the counters exactly.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Starts the real binary on `port` with its database in `dir`.
fn start_hub(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_statushub"))
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
        .expect("failed to start the statushub binary")
}

async fn wait_until_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
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
    // Arrange: a real process with 300 registered messages.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut hub = start_hub(dir.path(), port);
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
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
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
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(format!("wa:{id}:{status}"));
                    }
                    // The server is gone: stop sending.
                    _ => return,
                }
            }
        }
    });
    let killer = {
        let acknowledged = acknowledged.clone();
        async move {
            while acknowledged.lock().unwrap().len() < 400 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            hub.kill().expect("kill -9 failed");
            hub.wait().unwrap();
        }
    };
    futures_util::join!(futures_util::future::join_all(senders), killer);
    let acknowledged = acknowledged.lock().unwrap().clone();

    // Restart on the same file.
    let mut hub = start_hub(dir.path(), port);
    wait_until_ready(&client, &base).await;

    // Assert: every acknowledged notification is stored...
    let pool = open_db(&dir.path().join("hub.db")).await;
    let stored: HashSet<String> = sqlx::query_scalar("SELECT idempotency_key FROM status_events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    pool.close().await;
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged statuses lost: {lost:?}",
        lost.len()
    );
    assert!(
        acknowledged.len() >= 100,
        "the test acknowledged too little to mean anything"
    );

    // ...and the restarted hub's counters equal a recount.
    let metrics: serde_json::Value = client
        .get(format!("{base}/api/v1/campaigns/durable/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        counts_only(&metrics),
        sql_counts(&dir.path().join("hub.db"), "durable").await
    );
    assert_eq!(metrics["total"], 300);
    hub.kill().unwrap();
    hub.wait().unwrap();
}
