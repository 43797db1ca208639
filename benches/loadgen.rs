//! Load generator: registers a campaign on a running hub, then posts signed
//! WhatsApp status webhooks as fast as `--concurrency` keep-alive connections
//! allow, and reports throughput and latency of acknowledged (durably
//! committed) statuses.
//!
//! ```text
//! cargo run --release &                        # the hub, SQLite, synchronous=FULL
//! cargo bench --bench loadgen -- --messages 10000 --concurrency 64 --seconds 10
//! ```
//!
//! With `--subscribers N` it also holds N SSE connections to the campaign's
//! stream (`?include=statuses`) and reports the fan-out: status events
//! received per subscriber and the delay from the webhook's 200 to each
//! subscriber receiving the change.
//!
//! `--url` may list several instances of one hub, comma-separated (a
//! scale-out over one PostgreSQL): registration goes to the first, webhook
//! connections and subscribers are spread over all of them in turn, so the
//! fan-out delay then includes the hop between instances.
//!
//! Secrets are read like `statushub simulate` reads them: from the
//! environment (`STATUSHUB_ADMIN_TOKEN`, `WHATSAPP_WEBHOOK_SECRET`) or the
//! hub's `.statushub/secrets.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statushub::webhooks::whatsapp::signature;

struct Options {
    /// The first instance: registration and the final counters.
    url: String,
    /// Every instance; connections are spread over them in turn.
    urls: Vec<String>,
    messages: usize,
    concurrency: usize,
    seconds: u64,
    per_request: usize,
    data_dir: String,
    subscribers: usize,
}

fn options() -> Options {
    let mut options = Options {
        url: "http://127.0.0.1:8080".to_owned(),
        urls: vec!["http://127.0.0.1:8080".to_owned()],
        messages: 10_000,
        concurrency: 64,
        seconds: 10,
        per_request: 1,
        data_dir: ".statushub".to_owned(),
        subscribers: 0,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            panic!("flags take a value: {pair:?}")
        };
        match flag.as_str() {
            "--url" => {
                options.urls = value.split(',').map(str::to_owned).collect();
                options.url = options.urls[0].clone();
            }
            "--messages" => options.messages = value.parse().unwrap(),
            "--concurrency" => options.concurrency = value.parse().unwrap(),
            "--seconds" => options.seconds = value.parse().unwrap(),
            "--per-request" => options.per_request = value.parse().unwrap(),
            "--data-dir" => options.data_dir = value.clone(),
            "--subscribers" => options.subscribers = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

fn secret(name: &str, data_dir: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        return value;
    }
    let path = format!("{data_dir}/secrets.json");
    let stored: BTreeMap<String, String> = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|_| panic!("no {name} and no {path}")),
    )
    .unwrap();
    stored[name].clone()
}

fn payload(statuses: &[(String, &str, i64)]) -> Vec<u8> {
    let statuses: Vec<Value> = statuses
        .iter()
        .map(|(id, status, ts)| json!({"id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "15551234567",
            "conversation": {"id": "c0ffee", "origin": {"type": "marketing"}},
            "pricing": {"billable": true, "pricing_model": "CBP", "category": "marketing"}}))
        .collect();
    serde_json::to_vec(&statushub::webhooks::whatsapp::envelope(statuses)).unwrap()
}

#[tokio::main]
async fn main() {
    let options = options();
    let admin = secret("STATUSHUB_ADMIN_TOKEN", &options.data_dir);
    let app_secret = Arc::new(secret("WHATSAPP_WEBHOOK_SECRET", &options.data_dir));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // One campaign of `messages` messages.
    let campaign = format!("load-{}", std::process::id());
    let ids: Arc<Vec<String>> = Arc::new(
        (0..options.messages)
            .map(|i| format!("wamid.{campaign}.{i}"))
            .collect(),
    );
    let started = Instant::now();
    for chunk in ids.chunks(10_000) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"tenant_id": "load", "campaign_id": campaign, "channel": "whatsapp", "provider_message_id": id}))
            .collect();
        let response = client
            .post(format!("{}/api/v1/messages", options.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }
    println!(
        "registered {} messages in {:.2?}",
        options.messages,
        started.elapsed()
    );

    // Subscribers, connected before the load starts.
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut subscribers = Vec::new();
    for subscriber in 0..options.subscribers {
        let response = client
            .get(format!(
                "{}/api/v1/campaigns/{campaign}/stream?tenant_id=load&include=statuses",
                options.urls[subscriber % options.urls.len()]
            ))
            .bearer_auth(&admin)
            .timeout(Duration::from_secs(options.seconds + 60))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        subscribers.push(tokio::spawn(async move {
            use eventsource_stream::Eventsource as _;
            use futures_util::StreamExt as _;
            let mut events = response.bytes_stream().eventsource();
            let mut received: Vec<(String, Instant)> = Vec::new();
            let mut lagged = false;
            let stop = deadline + Duration::from_secs(3);
            while let Ok(Some(Ok(event))) =
                tokio::time::timeout_at(stop.into(), events.next()).await
            {
                match event.event.as_str() {
                    "status" => {
                        let data: Value = serde_json::from_str(&event.data).unwrap();
                        let key = format!(
                            "{}:{}",
                            data["provider_message_id"].as_str().unwrap(),
                            data["event"].as_str().unwrap()
                        );
                        received.push((key, Instant::now()));
                    }
                    "lagged" => {
                        lagged = true;
                        break;
                    }
                    _ => {}
                }
            }
            (received, lagged)
        }));
    }
    let replies: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();

    // Each worker walks the messages through sent → delivered → read.
    let next = Arc::new(AtomicUsize::new(0));
    let statuses = ["sent", "delivered", "read"];
    let workers: Vec<_> = (0..options.concurrency)
        .map(|worker| {
            let client = client.clone();
            let url = format!(
                "{}/webhooks/whatsapp",
                options.urls[worker % options.urls.len()]
            );
            let ids = ids.clone();
            let next = next.clone();
            let app_secret = app_secret.clone();
            let per_request = options.per_request;
            let replies = replies.clone();
            let track = options.subscribers > 0;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    let batch: Vec<(String, &str, i64)> = (0..per_request)
                        .map(|_| {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let status = statuses[(n / ids.len()) % statuses.len()];
                            (
                                ids[n % ids.len()].clone(),
                                status,
                                1_700_000_000 + (n / ids.len()) as i64,
                            )
                        })
                        .collect();
                    let body = payload(&batch);
                    let keys: Vec<String> = if track {
                        batch
                            .iter()
                            .map(|(id, status, _)| format!("{id}:{status}"))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let header = signature::sign(app_secret.as_bytes(), &body);
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("x-hub-signature-256", header)
                        .body(body)
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.bytes().await;
                            let replied = Instant::now();
                            latencies.push(replied - sent);
                            if track {
                                let mut replies = replies.lock().unwrap();
                                for key in keys {
                                    replies.entry(key).or_insert(replied);
                                }
                            }
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (mut each, failed) = worker.await.unwrap();
        latencies.append(&mut each);
        errors += failed;
    }
    let elapsed = Duration::from_secs(options.seconds);
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let requests = latencies.len();
    println!(
        "{} requests ({} statuses each) in {:?} with {} connections: {:.0} statuses/s acknowledged, p50 {:.2?}, p99 {:.2?}, max {:.2?}, {} errors",
        requests,
        options.per_request,
        elapsed,
        options.concurrency,
        (requests * options.per_request) as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies.last().unwrap(),
        errors
    );
    if !subscribers.is_empty() {
        let replies = replies.lock().unwrap().clone();
        let mut delays = Vec::new();
        let mut per_subscriber = Vec::new();
        let mut lagged = 0;
        for subscriber in subscribers {
            let (received, was_lagged) = subscriber.await.unwrap();
            lagged += usize::from(was_lagged);
            per_subscriber.push(received.len());
            for (key, at) in received {
                if let Some(replied) = replies.get(&key) {
                    // The change is published at commit, a moment before the
                    // reply is written, so a subscriber may see it first: 0.
                    delays.push(at.saturating_duration_since(*replied));
                }
            }
        }
        delays.sort();
        let at = |p: f64| {
            delays[((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1))]
        };
        let events: usize = per_subscriber.iter().sum();
        println!(
            "fan-out: {} subscribers, {} status events received ({:.0}/s in total, min {} max {} per subscriber), {} lagged; delay from webhook 200 to event: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            per_subscriber.len(),
            events,
            events as f64 / elapsed.as_secs_f64(),
            per_subscriber.iter().min().unwrap(),
            per_subscriber.iter().max().unwrap(),
            lagged,
            at(0.5),
            at(0.99),
            delays.last().copied().unwrap_or_default()
        );
    }
    let metrics: Value = client
        .get(format!(
            "{}/api/v1/campaigns/{campaign}/metrics?tenant_id=load",
            options.url
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("campaign counters: {metrics}");
}
