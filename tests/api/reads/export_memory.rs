//! The real binary streams a large export in bounded memory: a campaign of
//! 120,000 messages (about 70 MB of CSV) goes out while the process's
//! anonymous memory (`RssAnon` in `/proc/<pid>/status`: the heap, where an
//! export held in memory would be) grows by a small fraction of that. The
//! database file SQLite maps (`mmap_size`) is file-backed memory and is not
//! counted: the kernel drops those pages at will.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::*;

use super::{campaign_pk, seed_messages};

/// A statushub process, killed and reaped when dropped.
struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_hub(dir: &Path, database_url: &str, port: u16) -> Hub {
    let child = Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("serve")
        .env("STATUSHUB_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `RssAnon` of process `pid`, in KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status is needed to watch the hub's memory");
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no RssAnon in /proc/<pid>/status")
}

/// Streams an export; returns its bytes and lines.
async fn stream_export(client: &reqwest::Client, url: &str) -> (u64, u64) {
    let mut response = client
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|byte| **byte == b'\n').count() as u64;
    }
    (bytes, lines)
}

#[actix_web::test]
async fn a_large_export_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh_in(dir.path());
    let port = free_port();
    let hub = start_hub(dir.path(), &db.url(), port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "statushub did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for campaign in ["small", "big"] {
        let response = client
            .post(format!("{base}/api/v1/messages"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"tenant_id": "t", "campaign_id": campaign, "channel": "whatsapp",
                                      "provider_message_id": format!("wamid.{campaign}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    seed_messages(&db, campaign_pk(&db, "small").await, 5_000, 400).await;
    seed_messages(&db, campaign_pk(&db, "big").await, 120_000, 400).await;

    // Warm up (allocator, caches, statements) on a small export, then watch
    // the memory through the large one.
    let (small, _) =
        stream_export(&client, &format!("{base}/api/v1/campaigns/small/messages")).await;
    assert!(small > 1_000_000);
    let pid = hub.0.id();
    let baseline = rss_anon_kib(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let (bytes, lines) =
        stream_export(&client, &format!("{base}/api/v1/campaigns/big/messages")).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let growth_kib = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    println!(
        "export: {bytes} bytes, {lines} lines in {took:?}; RssAnon {baseline} KiB before, \
         peak growth {growth_kib} KiB"
    );
    assert_eq!(
        lines, 120_002,
        "header, the registered message, the seeded ones"
    );
    assert!(bytes > 60_000_000, "{bytes}");
    // Bounded: a page of 1,000 rows is well under a megabyte; allow the
    // allocator and SQLite's page cache their slack, and stay far below
    // the export itself.
    assert!(
        growth_kib < 24 * 1024 && growth_kib * 1024 * 3 < bytes,
        "RssAnon grew by {growth_kib} KiB during a {bytes}-byte export"
    );
    drop(hub);
}
