//! `statushub simulate`: registers a demo campaign on a running hub, then
//! plays signed WhatsApp status webhooks against it at a chosen rate, so a
//! newcomer can watch the debug page move.
//!
//! Each message gets a realistic lifecycle (most are read, some only
//! delivered, a few stay sent or fail), and the feed misbehaves the way
//! Meta's does: `read` sometimes arrives before `delivered`, and about one
//! notification in twenty is delivered twice. The run is bounded (a fixed
//! plan of statuses) and stops by itself, printing the campaign's counters.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use crate::cli::SimulateArgs;
use crate::webhooks::whatsapp::signature;

/// Messages registered per `POST /api/v1/messages`.
const REGISTER_CHUNK: usize = 1_000;
/// Most statuses in one webhook call (Meta batches some).
const MAX_PER_CALL: usize = 50;
/// Attempts per webhook call when the hub answers 503 or 429.
const MAX_ATTEMPTS: u32 = 6;
/// Longest pause honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Share of notifications delivered a second time.
const REDELIVERY: f64 = 0.05;
/// Share of read messages whose `read` arrives before their `delivered`.
const READ_FIRST: f64 = 0.12;

/// One status notification to play.
#[derive(Clone, Debug, PartialEq)]
struct Play {
    /// Index of the message in the campaign.
    message: usize,
    status: &'static str,
    /// Provider timestamp, unix seconds.
    timestamp: i64,
    /// A second delivery of a notification already played.
    redelivery: bool,
}

/// The statuses to play, in sending order, and what makes them interesting.
#[derive(Debug)]
struct Plan {
    plays: Vec<Play>,
    read_first: usize,
    redeliveries: usize,
}

/// What the hub's webhook receipts add up to.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    statuses: u64,
    applied: u64,
    duplicates: u64,
    unmatched: u64,
    dead_lettered: u64,
}

impl Tally {
    fn add(&mut self, receipt: &Value, statuses: usize) {
        let get = |key: &str| receipt.get(key).and_then(Value::as_u64).unwrap_or(0);
        self.calls += 1;
        self.statuses += statuses as u64;
        self.applied += get("applied");
        self.duplicates += get("duplicates");
        self.unmatched += get("unmatched");
        self.dead_lettered += get("dead_lettered");
    }
}

/// Runs `statushub simulate` to completion.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if !matches!(args.url.scheme(), "http" | "https") {
        bail!("--url must be an http or https url");
    }
    let admin_token = crate::secrets::admin_token(&args.data_dir, &args.admin_token)?;
    let secret =
        crate::secrets::whatsapp_webhook_secret(&args.data_dir, &args.whatsapp_webhook_secret)?;
    let campaign = args.campaign.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("demo-{}", &id[..8])
    });
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("statushub-simulate/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the http client")?;
    let messages = args.messages as usize;
    let ids: Vec<String> = (0..messages)
        .map(|index| format!("wamid.{campaign}.{index:06}"))
        .collect();

    println!(
        "simulating tenant {}, campaign {campaign}: {messages} whatsapp messages at {} statuses/s against {} (seed {seed})",
        args.tenant, args.rate, args.url
    );

    register(&client, &args, &admin_token, &campaign, &ids).await?;

    let start = time::OffsetDateTime::now_utc().unix_timestamp();
    let plan = plan(messages, args.rate, start, &mut rng);
    println!(
        "playing {} statuses ({} redeliveries, {} read before delivered), about {:.0} s",
        plan.plays.len(),
        plan.redeliveries,
        plan.read_first,
        plan.plays.len() as f64 / args.rate
    );

    let webhook = endpoint(&args.url, &["webhooks", "whatsapp"])?;
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut next = 0;
    let mut last_progress = Instant::now();
    while next < plan.plays.len() {
        // Everything due by now goes out, in calls of at most MAX_PER_CALL.
        let due =
            ((started.elapsed().as_secs_f64() * args.rate) as usize + 1).min(plan.plays.len());
        for chunk in plan.plays[next..due].chunks(MAX_PER_CALL) {
            let body = payload(chunk, &ids)?;
            let receipt = post_webhook(&client, &webhook, secret.as_bytes(), body).await?;
            tally.add(&receipt, chunk.len());
        }
        next = due;
        if last_progress.elapsed() >= Duration::from_secs(1) || next == plan.plays.len() {
            last_progress = Instant::now();
            println!(
                "  [{:>5.1}s] {next}/{} statuses · applied {} · duplicates {} · unmatched {}",
                started.elapsed().as_secs_f64(),
                plan.plays.len(),
                tally.applied,
                tally.duplicates,
                tally.unmatched
            );
        }
        if next < plan.plays.len() {
            let next_at = started + Duration::from_secs_f64(next as f64 / args.rate);
            tokio::time::sleep_until(tokio::time::Instant::from_std(next_at)).await;
        }
    }
    println!(
        "done in {:.1} s: {} statuses in {} webhook calls · applied {} · duplicates {} · unmatched {} · dead-lettered {}",
        started.elapsed().as_secs_f64(),
        tally.statuses,
        tally.calls,
        tally.applied,
        tally.duplicates,
        tally.unmatched,
        tally.dead_lettered
    );

    let metrics = fetch_metrics(&client, &args, &admin_token, &campaign).await?;
    let count = |key: &str| metrics.get(key).and_then(Value::as_u64).unwrap_or(0);
    println!(
        "campaign {campaign}: total {} · sent {} · delivered {} · read {} · failed {} · clicked {} · complained {} (version {})",
        count("total"),
        count("sent"),
        count("delivered"),
        count("read"),
        count("failed"),
        count("clicked"),
        count("complained"),
        count("version")
    );
    println!("{}", serde_json::to_string_pretty(&metrics)?);
    Ok(())
}

/// Returns `base` with `segments` appended to its path (percent-encoded).
fn endpoint(base: &Url, segments: &[&str]) -> anyhow::Result<Url> {
    let mut url = base.clone();
    url.set_query(None);
    url.path_segments_mut()
        .map_err(|()| anyhow!("--url must be an http or https url"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Registers the campaign's messages as the admin.
async fn register(
    client: &reqwest::Client,
    args: &SimulateArgs,
    admin_token: &str,
    campaign: &str,
    ids: &[String],
) -> anyhow::Result<()> {
    let url = endpoint(&args.url, &["api", "v1", "messages"])?;
    let (mut registered, mut existing) = (0, 0);
    for (chunk_index, chunk) in ids.chunks(REGISTER_CHUNK).enumerate() {
        let messages: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(offset, id)| {
                let index = chunk_index * REGISTER_CHUNK + offset;
                json!({
                    "tenant_id": args.tenant, "campaign_id": campaign, "channel": "whatsapp",
                    "provider_message_id": id, "recipient": format!("1555{index:07}"),
                })
            })
            .collect();
        let response = client
            .post(url.clone())
            .bearer_auth(admin_token)
            .json(&messages)
            .send()
            .await
            .with_context(|| format!("failed to reach the hub at {}", args.url))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            bail!(
                "the hub refused the admin token ({status}): set STATUSHUB_ADMIN_TOKEN, or \
                 --data-dir to the hub's data directory"
            );
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("registering messages failed with {status}: {text}");
        }
        let receipt: Value = response
            .json()
            .await
            .context("unreadable registration receipt")?;
        registered += receipt
            .get("registered")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        existing += receipt.get("existing").and_then(Value::as_u64).unwrap_or(0);
    }
    println!(
        "registered {} messages ({registered} new, {existing} already known)",
        ids.len()
    );
    Ok(())
}

/// Returns the campaign's counters.
async fn fetch_metrics(
    client: &reqwest::Client,
    args: &SimulateArgs,
    admin_token: &str,
    campaign: &str,
) -> anyhow::Result<Value> {
    let mut url = endpoint(&args.url, &["api", "v1", "campaigns", campaign, "metrics"])?;
    url.query_pairs_mut().append_pair("tenant_id", &args.tenant);
    let response = client
        .get(url)
        .bearer_auth(admin_token)
        .send()
        .await
        .context("failed to read the campaign metrics")?;
    let status = response.status();
    if !status.is_success() {
        bail!("reading the campaign metrics failed with {status}");
    }
    response.json().await.context("unreadable campaign metrics")
}

/// Posts one signed webhook call, retrying while the hub asks to (503/429).
async fn post_webhook(
    client: &reqwest::Client,
    url: &Url,
    secret: &[u8],
    body: Vec<u8>,
) -> anyhow::Result<Value> {
    let header = signature::sign(secret, &body);
    let mut attempt = 1;
    loop {
        let response = client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &header)
            .body(body.clone())
            .send()
            .await
            .context("failed to reach the hub's whatsapp webhook")?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.context("unreadable webhook receipt");
        }
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the hub refused the webhook signature (401): WHATSAPP_WEBHOOK_SECRET differs \
                 from the hub's"
            );
        }
        let retryable =
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
        if !retryable || attempt >= MAX_ATTEMPTS {
            let text = response.text().await.unwrap_or_default();
            bail!("the whatsapp webhook answered {status}: {text}");
        }
        let pause = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs)
            .min(MAX_RETRY_AFTER);
        println!("  hub busy ({status}), retrying in {} s", pause.as_secs());
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// Returns a Meta-shaped webhook body carrying `plays`.
fn payload(plays: &[Play], ids: &[String]) -> anyhow::Result<Vec<u8>> {
    let statuses: Vec<Value> = plays
        .iter()
        .map(|play| {
            let mut status = json!({
                "id": ids[play.message],
                "status": play.status,
                "timestamp": play.timestamp.to_string(),
                "recipient_id": format!("1555{:07}", play.message),
            });
            if matches!(play.status, "sent" | "delivered") {
                status["conversation"] = json!({
                    "id": format!("conv-{:06}", play.message),
                    "origin": {"type": "marketing"},
                });
                status["pricing"] =
                    json!({"billable": true, "pricing_model": "CBP", "category": "marketing"});
            }
            if play.status == "failed" {
                status["errors"] = json!([{
                    "code": 131026,
                    "title": "Message undeliverable",
                    "message": "Message undeliverable",
                    "error_data": {"details": "the recipient is not on whatsapp"},
                }]);
            }
            status
        })
        .collect();
    let body = crate::webhooks::whatsapp::envelope(statuses);
    Ok(serde_json::to_vec(&body)?)
}

/// Plans the statuses of `messages` messages played at `rate` per second
/// from unix time `start`.
///
/// Each status gets a provider time (when it happened) and an arrival time
/// (when its webhook comes); the plan is sorted by arrival, and a timestamp
/// is the provider time spread over the run. Reads that arrive first keep
/// their later provider time, as Meta's do.
fn plan(messages: usize, rate: f64, start: i64, rng: &mut StdRng) -> Plan {
    // (arrival, provider time, message, status), times in "run units" (0..~1.5).
    let mut events: Vec<(f64, f64, usize, &'static str)> = Vec::new();
    let mut read_first = 0;
    for message in 0..messages {
        let sent = message as f64 / messages.max(1) as f64 * 0.4 + rng.gen_range(0.0..0.05);
        let arrive = |at: f64, rng: &mut StdRng| at + rng.gen_range(0.0..0.02);
        let fate: f64 = rng.gen_range(0.0..1.0);
        if fate < 0.04 {
            // Failed; half of them were first reported sent.
            let failed = sent + rng.gen_range(0.02..0.2);
            if rng.gen_bool(0.5) {
                events.push((arrive(sent, rng), sent, message, "sent"));
            }
            events.push((arrive(failed, rng), failed, message, "failed"));
            continue;
        }
        events.push((arrive(sent, rng), sent, message, "sent"));
        if fate < 0.07 {
            continue; // never delivered (phone off)
        }
        let delivered = sent + rng.gen_range(0.02..0.3);
        let delivered_arrival = arrive(delivered, rng);
        events.push((delivered_arrival, delivered, message, "delivered"));
        if fate < 0.25 {
            continue; // delivered, never read
        }
        let read = delivered + rng.gen_range(0.05..0.6);
        let read_arrival = if rng.gen_bool(READ_FIRST) {
            read_first += 1;
            delivered_arrival - 0.001
        } else {
            arrive(read, rng)
        };
        events.push((read_arrival, read, message, "read"));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Timestamps: provider times mapped onto the run's expected duration.
    let duration = events.len() as f64 / rate;
    let last = events.iter().map(|event| event.1).fold(0.0_f64, f64::max);
    let scale = if last > 0.0 { duration / last } else { 0.0 };
    let mut keyed: Vec<(f64, Play)> = Vec::with_capacity(events.len() + events.len() / 16);
    let mut redeliveries = 0;
    for (position, (_, at, message, status)) in events.into_iter().enumerate() {
        let play = Play {
            message,
            status,
            timestamp: start + (at * scale).round() as i64,
            redelivery: false,
        };
        if rng.gen_bool(REDELIVERY) {
            // Redelivered a little later, between two other notifications.
            let later = position as f64 + rng.gen_range(1..=20) as f64 + 0.5;
            keyed.push((
                later,
                Play {
                    redelivery: true,
                    ..play.clone()
                },
            ));
            redeliveries += 1;
        }
        keyed.push((position as f64, play));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    Plan {
        plays: keyed.into_iter().map(|(_, play)| play).collect(),
        read_first,
        redeliveries,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn plan_is_bounded_realistic_and_misordered() {
        let mut rng = StdRng::seed_from_u64(42);
        let plan = plan(1_000, 50.0, 1_700_000_000, &mut rng);
        let originals = plan.plays.iter().filter(|play| !play.redelivery).count();
        assert_eq!(plan.plays.len(), originals + plan.redeliveries);
        assert!(originals <= 3 * 1_000);
        // About 5% redelivered, about 12% of reads first.
        let expected = originals as f64 * REDELIVERY;
        let redeliveries = plan.redeliveries as f64;
        assert!(
            redeliveries > expected * 0.6 && redeliveries < expected * 1.4,
            "{redeliveries} redeliveries of {originals}"
        );
        assert!(plan.read_first > 20, "{}", plan.read_first);

        let mut statuses: HashMap<usize, Vec<&str>> = HashMap::new();
        for play in plan.plays.iter().filter(|play| !play.redelivery) {
            statuses.entry(play.message).or_default().push(play.status);
        }
        assert_eq!(statuses.len(), 1_000, "every message gets a status");
        let read = statuses.values().filter(|s| s.contains(&"read")).count();
        let failed = statuses.values().filter(|s| s.contains(&"failed")).count();
        let unread = statuses
            .values()
            .filter(|s| s.contains(&"delivered") && !s.contains(&"read"))
            .count();
        assert!(read > 650 && read < 850, "{read}");
        assert!(failed > 10 && failed < 80, "{failed}");
        assert!(unread > 100, "{unread}");
        // Each notification of a message is distinct; redeliveries repeat one.
        for play in plan.plays.iter().filter(|play| play.redelivery) {
            assert!(statuses[&play.message].contains(&play.status));
        }
        let distinct: HashSet<(usize, &str)> = plan
            .plays
            .iter()
            .filter(|play| !play.redelivery)
            .map(|play| (play.message, play.status))
            .collect();
        assert_eq!(distinct.len(), originals);
    }

    #[test]
    fn read_first_keeps_the_later_timestamp() {
        let mut rng = StdRng::seed_from_u64(7);
        let plan = plan(500, 100.0, 1_700_000_000, &mut rng);
        let mut seen_delivered = HashSet::new();
        let mut early_reads = 0;
        let mut delivered_at = HashMap::new();
        let mut read_at = HashMap::new();
        for play in &plan.plays {
            match play.status {
                "delivered" => {
                    seen_delivered.insert(play.message);
                    delivered_at.insert(play.message, play.timestamp);
                }
                "read" => {
                    if !seen_delivered.contains(&play.message) {
                        early_reads += 1;
                    }
                    read_at.insert(play.message, play.timestamp);
                }
                _ => {}
            }
        }
        assert!(plan.read_first > 0 && early_reads >= plan.read_first);
        for (message, read) in read_at {
            assert!(
                read >= delivered_at[&message],
                "read stamped after delivered"
            );
        }
    }

    #[test]
    fn payload_is_meta_shaped() {
        let ids = vec!["wamid.a".to_owned()];
        let plays = [Play {
            message: 0,
            status: "failed",
            timestamp: 1_700_000_000,
            redelivery: false,
        }];
        let body: Value = serde_json::from_slice(&payload(&plays, &ids).unwrap()).unwrap();
        let status = &body["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(status["id"], "wamid.a");
        assert_eq!(status["timestamp"], "1700000000");
        assert_eq!(status["errors"][0]["code"], 131026);
    }

    #[test]
    fn endpoints_keep_a_base_path() {
        let base: Url = "http://127.0.0.1:8080/hub/".parse().unwrap();
        assert_eq!(
            endpoint(&base, &["api", "v1", "campaigns", "a b", "metrics"])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/hub/api/v1/campaigns/a%20b/metrics"
        );
        let base: Url = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            endpoint(&base, &["webhooks", "whatsapp"]).unwrap().as_str(),
            "http://127.0.0.1:8080/webhooks/whatsapp"
        );
    }
}
