//! One run of the generator, from flags to [`Summary`]: register, connect
//! subscribers, send the load, then check the hub's counters against the
//! statuses it acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;
use serde::Deserialize;
use statushub::clock::now_ms;
use tokio::time::Instant;

use super::conn::{Connections, Failure};
use super::histogram::Histogram;
use super::hub::{Hub, Metrics};
use super::options::{Channel, Mode, Options};
use super::payload::{Payloads, SesKey, sns_message_id};
use super::plan::{Counters, Plan, campaign_id};
use super::procfs;
use super::rate::{self, Load, Schedule};
use super::report::{
    self, Check, Fanout, Ingest, Ready, Receipts, Rss, Summary, check_line, fanout_line,
    ingest_line, receipts_line, registration_line, rss_line,
};
use super::sse::{Kind, Replies, Seen, Streams, Subscribers};

/// Time allowed for one webhook call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Mismatching campaigns described in the report at most.
const MISMATCHES_SHOWN: usize = 5;
/// Time the hub's memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_secs(1);

/// Runs the generator as `options` say and returns what it measured,
/// printing one line per measure as it goes.
pub async fn run(options: Options) -> anyhow::Result<Summary> {
    options.check()?;
    // 10,000 subscribers need 10,000 descriptors: raise the soft limit to
    // the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let admin_token = statushub::secrets::admin_token(&options.data_dir, &options.admin_token)?;
    let run = options.run_id.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        id[..8].to_owned()
    });
    let seed = options.seed.unwrap_or_else(|| rand::thread_rng().r#gen());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency.max(options.register_parallel))
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()?;
    let hub = Hub {
        client: client.clone(),
        url: options.url[0].trim_end_matches('/').to_owned(),
        admin_token: admin_token.clone(),
        tenant: options.tenant.clone(),
    };
    let mut summary = Summary {
        run: run.clone(),
        mode: format!("{:?}", options.mode).to_lowercase(),
        channel: format!("{:?}", options.channel).to_lowercase(),
        order: format!("{:?}", options.order).to_lowercase(),
        campaigns: options.campaigns,
        messages_per_campaign: options.messages,
        per_request: options.per_request,
        concurrency: options.concurrency,
        rate: options.rate,
        seconds: options.seconds,
        laps: options.laps,
        seed,
        ..Summary::default()
    };

    if options.mode == Mode::Ready {
        summary.ready = Some(ready(&options, &hub).await?);
        return Ok(summary);
    }

    let campaigns: Arc<Vec<String>> = Arc::new(
        (0..options.campaigns)
            .map(|campaign| campaign_id(&run, campaign))
            .collect(),
    );
    println!(
        "run {run} (seed {seed}): tenant {}, campaigns {}…, {} {} messages each",
        options.tenant,
        campaigns[0],
        options.messages,
        options.channel.registered_as()
    );
    let registration = hub
        .register(
            options.channel,
            &run,
            &campaigns,
            options.messages,
            options.register_chunk,
            options.register_parallel,
        )
        .await?;
    println!("{}", registration_line(&registration));
    summary.registration = Some(registration);
    if options.mode == Mode::Seed {
        return Ok(summary);
    }

    load(&options, &hub, &run, campaigns, &mut summary).await?;
    Ok(summary)
}

/// `--mode ready`: waits for `/readyz` and reads the hub's age.
async fn ready(options: &Options, hub: &Hub) -> anyhow::Result<Ready> {
    hub.wait_ready(Duration::from_secs(3_600)).await?;
    let age = procfs::process_age(options.hub_pid[0])?;
    let ready = Ready {
        seconds_since_start: age.as_secs_f64(),
        rss_kib: procfs::rss_kib(&options.hub_pid).ok(),
    };
    println!("{}", report::ready_line(&ready));
    Ok(ready)
}

/// The hub's RSS, when its pid was given.
fn rss(options: &Options) -> anyhow::Result<Option<u64>> {
    if options.hub_pid.is_empty() {
        return Ok(None);
    }
    procfs::rss_kib(&options.hub_pid).map(Some)
}

/// Sends the load and fills the summary's measures.
async fn load(
    options: &Options,
    hub: &Hub,
    run: &str,
    campaigns: Arc<Vec<String>>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let plan = Arc::new(Plan::new(
        options.channel,
        options.campaigns,
        options.messages,
        options.order,
        options.per_request,
        summary.seed,
    ));
    let whatsapp_secret = match options.channel {
        Channel::Whatsapp => Some(statushub::secrets::whatsapp_webhook_secret(
            &options.data_dir,
            &options.whatsapp_webhook_secret,
        )?),
        Channel::Ses => None,
    };
    let ses = match (&options.sns_cert_dir, options.channel) {
        (Some(dir), Channel::Ses) => {
            let key = SesKey::create(dir, run)?;
            println!(
                "signing sns notifications with a key made for this run, its certificate at {}",
                key.cert_path().display()
            );
            Some(key)
        }
        _ => None,
    };
    let payloads = Arc::new(Payloads {
        run: run.to_owned(),
        campaigns: campaigns.to_vec(),
        sent_ms: now_ms(),
        whatsapp_secret,
        ses,
        topic_arn: options.sns_topic_arn.clone(),
    });

    // The hub's memory before and with idle subscribers.
    let subscribers = options.subscribers + options.status_subscribers;
    let rss_before = rss(options)?;
    let origin = Instant::now();
    let streams = Streams {
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?,
        urls: options
            .url
            .iter()
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect(),
        admin_token: hub.admin_token.clone(),
        tenant: options.tenant.clone(),
        campaigns: campaigns.clone(),
        channel: options.channel,
        run: run.to_owned(),
    };
    let listening = if subscribers > 0 {
        let connected = Instant::now();
        let listening =
            Subscribers::connect(&streams, options.subscribers, options.status_subscribers).await?;
        println!(
            "connected {} subscribers ({} metrics, {} with statuses) in {:.2} s",
            listening.len(),
            options.subscribers,
            options.status_subscribers,
            connected.elapsed().as_secs_f64()
        );
        Some(listening)
    } else {
        None
    };
    let rss_idle = match (rss_before, &listening) {
        (Some(_), Some(_)) => {
            tokio::time::sleep(SETTLE).await;
            rss(options)?
        }
        _ => None,
    };

    // What can be sent, and SES's signatures for it.
    let planned = plan.total_requests(options.laps);
    let schedule = options
        .rate
        .map(|rate| Schedule::for_run(rate, options.seconds, planned));
    let sendable = schedule.map_or(planned, |schedule| Some(schedule.count));
    let (presigned, presign_seconds) = match options.channel {
        Channel::Ses => {
            let started = Instant::now();
            let numbers = first_notifications(&plan, sendable, options.presign);
            println!(
                "signing {} sns notifications before the clock starts…",
                numbers.len()
            );
            let bodies = payloads.presign(&plan, &numbers)?;
            println!(
                "signed in {:.1} s{}",
                started.elapsed().as_secs_f64(),
                if numbers.len() == options.presign {
                    " (--presign): any beyond are signed as they are sent, and counted"
                } else {
                    ""
                }
            );
            (Some(bodies), started.elapsed().as_secs_f64())
        }
        Channel::Whatsapp => (None, 0.0),
    };

    let sender = Arc::new(Sender {
        connections: Connections::new(
            &streams
                .urls
                .iter()
                .map(|url| match options.channel {
                    Channel::Whatsapp => format!("{url}/webhooks/whatsapp"),
                    Channel::Ses => format!("{url}/webhooks/email"),
                })
                .collect::<Vec<_>>(),
            REQUEST_TIMEOUT,
        )?,
        plan: plan.clone(),
        payloads: payloads.clone(),
        laps: options.laps,
        presigned,
        ses_authorization: options.ses_webhook_secret.as_ref().map(|secret| {
            use base64::Engine as _;
            let pair = format!("sns:{}", secrecy::ExposeSecret::expose_secret(secret));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }),
        acknowledged: (0..plan.notifications.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
        replies: (options.status_subscribers > 0).then(|| Replies::new(origin, &plan)),
        tally: Tally::default(),
    });

    println!(
        "sending {} for up to {} s…",
        match (schedule, planned) {
            (Some(schedule), _) => format!(
                "{} requests at {} requests/s",
                schedule.count, schedule.rate
            ),
            (None, Some(planned)) => format!("{planned} requests, closed loop"),
            (None, None) => "requests in laps, closed loop".to_owned(),
        },
        options.seconds
    );
    let sending = sender.clone();
    let send = move |request: usize| {
        let sender = sending.clone();
        async move { sender.send(request).await }
    };
    let measured: Load = match schedule {
        Some(schedule) => rate::open_loop(schedule, options.concurrency, send).await,
        None => {
            let duration = Duration::from_secs_f64(options.seconds);
            rate::closed_loop(planned, options.concurrency, duration, send).await
        }
    };
    let rss_end = rss(options)?;

    // What the load did.
    let tally = &sender.tally;
    let acknowledged_statuses = tally.acknowledged_statuses.load(Ordering::Relaxed);
    let seconds = measured.elapsed.as_secs_f64().max(1e-9);
    let ingest = Ingest {
        mode: if schedule.is_some() { "open" } else { "closed" }.to_owned(),
        offered_rate: options.rate,
        requests: measured.issued,
        ok: measured.ok,
        errors: measured.failed,
        errors_by_kind: tally
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        acknowledged_statuses,
        seconds,
        requests_per_second: measured.achieved_rate(),
        statuses_per_second: acknowledged_statuses as f64 / seconds,
        latency_from: if measured.from_due { "due" } else { "send" }.to_owned(),
        latency: measured.latency.percentiles(),
        late: measured.late,
        start_lag: measured.from_due.then(|| measured.start_lag.percentiles()),
        planned_requests: planned,
        plan_complete: planned.is_some_and(|planned| measured.issued >= planned),
        presign_seconds,
        signed_during_run: tally.signed_during_run.load(Ordering::Relaxed),
    };
    println!(
        "{}",
        ingest_line(&ingest, options.per_request, options.concurrency)
    );

    // The hub's counters and receipts against the acknowledged statuses.
    let metrics = hub.all_metrics(&campaigns).await?;
    let expected =
        plan.expected_counters(|number| sender.acknowledged[number].load(Ordering::Relaxed));
    let distinct = sender
        .acknowledged
        .iter()
        .filter(|flag| flag.load(Ordering::Relaxed))
        .count() as u64;
    let receipts = Receipts {
        received: tally.received.load(Ordering::Relaxed),
        applied: tally.applied.load(Ordering::Relaxed),
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        unmatched: tally.unmatched.load(Ordering::Relaxed),
        dead_lettered: tally.dead_lettered.load(Ordering::Relaxed),
        expected_applied: distinct,
        expected_duplicates: (acknowledged_statuses as u64).saturating_sub(distinct),
    };
    println!("{}", receipts_line(&receipts));
    let check = check(&campaigns, &metrics, &expected, &receipts, &ingest);
    println!("{}", check_line(&check));

    // Subscribers: until each has the final version, or the grace is over.
    if let Some(listening) = listening {
        let versions = metrics.iter().map(|metrics| metrics.version).collect();
        let seen = listening
            .finish(versions, Duration::from_secs_f64(options.sse_grace))
            .await;
        for kind in [Kind::Metrics, Kind::Statuses] {
            let of_kind: Vec<&Seen> = seen.iter().filter(|seen| seen.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let fanout = fanout(kind, &of_kind, &plan, sender.replies.as_ref());
            println!("{}", fanout_line(&fanout));
            summary.sse.push(fanout);
        }
    }
    if let (Some(before), Some(end)) = (rss_before, rss_end) {
        let rss = Rss {
            before_subscribers_kib: before,
            idle_subscribers_kib: rss_idle,
            per_idle_subscriber_kib: rss_idle
                .filter(|_| subscribers > 0)
                .map(|idle| (idle as f64 - before as f64) / subscribers as f64),
            end_of_load_kib: end,
        };
        println!("{}", rss_line(&rss, subscribers));
        summary.rss = Some(rss);
    }
    summary.ingest = Some(ingest);
    summary.receipts = Some(receipts);
    summary.check = Some(check);
    Ok(())
}

/// The distinct notifications the first `requests` requests carry (of one
/// lap when unbounded), in the order they are sent, at most `most`.
fn first_notifications(plan: &Plan, requests: Option<usize>, most: usize) -> Vec<u32> {
    let plays = requests.map_or(plan.plays.len(), |requests| {
        (requests * plan.per_request).min(plan.plays.len())
    });
    let mut wanted = vec![false; plan.notifications.len()];
    let mut first = Vec::new();
    for &number in &plan.plays[..plays] {
        if first.len() == most {
            break;
        }
        if !std::mem::replace(&mut wanted[number as usize], true) {
            first.push(number);
        }
    }
    first
}

/// Compares the hub's counters with the expected ones, campaign by
/// campaign, and the receipts' totals with what the generator sent.
fn check(
    campaigns: &[String],
    metrics: &[Metrics],
    expected: &[Counters],
    receipts: &Receipts,
    ingest: &Ingest,
) -> Check {
    let mut check = Check {
        campaigns: campaigns.len(),
        ..Check::default()
    };
    for counters in expected {
        add(&mut check.expected_total, counters);
    }
    if ingest.errors > 0 {
        check.skipped = Some(format!(
            "{} requests failed, and a failed request may or may not have been recorded",
            ingest.errors
        ));
        return check;
    }
    let mut mismatched = 0;
    for ((campaign, metrics), expected) in campaigns.iter().zip(metrics).zip(expected) {
        if metrics.counters == *expected {
            check.matched += 1;
        } else {
            mismatched += 1;
            if check.mismatches.len() < MISMATCHES_SHOWN {
                check.mismatches.push(format!(
                    "campaign {campaign}: the hub says {}, the acknowledged statuses make {}",
                    serde_json::to_string(&metrics.counters).unwrap_or_default(),
                    serde_json::to_string(expected).unwrap_or_default()
                ));
            }
        }
    }
    if mismatched > check.mismatches.len() {
        check
            .mismatches
            .push(format!("… {mismatched} campaigns in all"));
    }
    for (what, got, want) in [
        (
            "received",
            receipts.received,
            ingest.acknowledged_statuses as u64,
        ),
        ("applied", receipts.applied, receipts.expected_applied),
        (
            "duplicates",
            receipts.duplicates,
            receipts.expected_duplicates,
        ),
        ("unmatched", receipts.unmatched, 0),
        ("dead-lettered", receipts.dead_lettered, 0),
    ] {
        if got != want {
            check
                .receipt_mismatches
                .push(format!("receipts: {what} {got}, expected {want}"));
        }
    }
    check
}

/// Adds `counters` into `total`.
fn add(total: &mut Counters, counters: &Counters) {
    total.total += counters.total;
    total.sent += counters.sent;
    total.delivered += counters.delivered;
    total.read += counters.read;
    total.failed += counters.failed;
    total.clicked += counters.clicked;
    total.complained += counters.complained;
    total.by_status.pending += counters.by_status.pending;
    total.by_status.sent += counters.by_status.sent;
    total.by_status.delivered += counters.by_status.delivered;
    total.by_status.read += counters.by_status.read;
    total.by_status.failed += counters.by_status.failed;
}

/// Adds up what the subscribers of one kind saw.
fn fanout(kind: Kind, seen: &[&Seen], plan: &Plan, replies: Option<&Replies>) -> Fanout {
    let mut delay = Histogram::new();
    let events: Vec<u64> = seen
        .iter()
        .map(|each| match kind {
            Kind::Metrics => {
                delay.merge(&each.metrics_delay);
                each.metrics_events
            }
            Kind::Statuses => {
                if let Some(replies) = replies {
                    each.status_delays(plan.messages, replies, &mut delay);
                }
                each.status_events
            }
        })
        .collect();
    Fanout {
        kind: match kind {
            Kind::Metrics => "metrics",
            Kind::Statuses => "statuses",
        }
        .to_owned(),
        subscribers: seen.len(),
        events: events.iter().sum(),
        events_min_per_subscriber: events.iter().copied().min().unwrap_or(0),
        events_max_per_subscriber: events.iter().copied().max().unwrap_or(0),
        lagged: seen.iter().filter(|each| each.lagged).count(),
        ended_early: seen.iter().filter(|each| each.ended_early).count(),
        reached_final: seen.iter().filter(|each| each.reached_final).count(),
        delay_from: match kind {
            Kind::Metrics => "updated_at",
            Kind::Statuses => "webhook 200",
        }
        .to_owned(),
        delay: delay.percentiles(),
    }
}

/// The hub's webhook receipt (the parts added up).
#[derive(Debug, Default, Deserialize)]
struct Receipt {
    #[serde(default)]
    received: u64,
    #[serde(default)]
    applied: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    unmatched: u64,
    #[serde(default)]
    dead_lettered: u64,
}

/// What the requests of a run add up to.
#[derive(Debug, Default)]
struct Tally {
    received: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    unmatched: AtomicU64,
    dead_lettered: AtomicU64,
    acknowledged_statuses: AtomicUsize,
    signed_during_run: AtomicUsize,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(kind)
            .or_default() += 1;
    }
}

/// Sends request after request of a plan.
struct Sender {
    /// The webhook endpoint of each instance; request r goes to r mod their
    /// number.
    connections: Connections,
    plan: Arc<Plan>,
    payloads: Arc<Payloads>,
    laps: usize,
    /// SES: signed notifications by number.
    presigned: Option<Vec<Option<Vec<u8>>>>,
    /// SES: the `Authorization` header of the hub's basic-auth secret.
    ses_authorization: Option<String>,
    /// Notifications carried by a request answered 200, by number.
    acknowledged: Vec<AtomicBool>,
    /// For status subscribers' delays.
    replies: Option<Replies>,
    tally: Tally,
}

impl Sender {
    /// Sends request `request`; `true` when the hub answered 200.
    async fn send(&self, request: usize) -> bool {
        let numbers = self.plan.request(request, self.laps);
        let sent = match self.plan.channel {
            Channel::Whatsapp => self.whatsapp(request, &numbers).await,
            Channel::Ses => self.ses(request, numbers[0]).await,
        };
        let (status, body) = match sent {
            Ok(Ok(answer)) => answer,
            Ok(Err(failure)) => {
                self.tally.error(failure.describe());
                return false;
            }
            Err(error) => {
                self.tally.error(format!("not built: {error:#}"));
                return false;
            }
        };
        if status != 200 {
            self.tally.error(status.to_string());
            return false;
        }
        let receipt: Receipt = match serde_json::from_slice(&body) {
            Ok(receipt) => receipt,
            Err(_) => {
                self.tally.error("200 without a receipt".to_owned());
                return false;
            }
        };
        let at = Instant::now();
        let tally = &self.tally;
        tally
            .received
            .fetch_add(receipt.received, Ordering::Relaxed);
        tally.applied.fetch_add(receipt.applied, Ordering::Relaxed);
        tally
            .duplicates
            .fetch_add(receipt.duplicates, Ordering::Relaxed);
        tally
            .unmatched
            .fetch_add(receipt.unmatched, Ordering::Relaxed);
        tally
            .dead_lettered
            .fetch_add(receipt.dead_lettered, Ordering::Relaxed);
        tally
            .acknowledged_statuses
            .fetch_add(numbers.len(), Ordering::Relaxed);
        for &number in &numbers {
            self.acknowledged[number as usize].store(true, Ordering::Relaxed);
            if let Some(replies) = &self.replies {
                let notification = &self.plan.notifications[number as usize];
                replies.acknowledged(self.plan.message_of(notification), notification.stage, at);
            }
        }
        true
    }

    /// Posts the WhatsApp webhook carrying `numbers`.
    async fn whatsapp(
        &self,
        request: usize,
        numbers: &[u32],
    ) -> anyhow::Result<Result<(u16, Bytes), Failure>> {
        let (body, signature) = self.payloads.whatsapp(&self.plan, numbers)?;
        let headers = [
            ("content-type", "application/json"),
            ("x-hub-signature-256", signature.as_str()),
        ];
        Ok(self.connections.post(request, &headers, body).await)
    }

    /// Posts the SNS notification of `number`, signed before the run when
    /// it was.
    async fn ses(
        &self,
        request: usize,
        number: u32,
    ) -> anyhow::Result<Result<(u16, Bytes), Failure>> {
        let notification = &self.plan.notifications[number as usize];
        let signed = self
            .presigned
            .as_ref()
            .and_then(|bodies| bodies[number as usize].clone());
        let body = match signed {
            Some(body) => body,
            None => {
                self.tally.signed_during_run.fetch_add(1, Ordering::Relaxed);
                self.payloads.ses(notification)?
            }
        };
        let message_id = sns_message_id(&self.payloads.run, notification);
        let mut headers = vec![
            ("content-type", "text/plain; charset=UTF-8"),
            ("user-agent", "Amazon Simple Notification Service Agent"),
            ("x-amz-sns-message-type", "Notification"),
            ("x-amz-sns-message-id", message_id.as_str()),
            ("x-amz-sns-topic-arn", self.payloads.topic_arn.as_str()),
        ];
        if let Some(authorization) = &self.ses_authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        Ok(self.connections.post(request, &headers, body).await)
    }
}

#[cfg(test)]
mod tests {
    use super::super::options::Order;
    use super::*;

    #[test]
    fn presigning_covers_exactly_what_may_be_sent() {
        let plan = Plan::new(Channel::Ses, 1, 20, Order::Duplicated, 1, 3);
        let count = plan.notifications.len();
        // Unbounded (closed loop, laps): every notification once.
        let all = first_notifications(&plan, None, usize::MAX);
        assert_eq!(all.len(), count);
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), count);
        // Open loop: the distinct ones among the first plays, in play order.
        let mut expected: Vec<u32> = Vec::new();
        for &number in &plan.plays[..30] {
            if !expected.contains(&number) {
                expected.push(number);
            }
        }
        assert!(expected.len() < 30, "duplicated plays repeat some");
        assert_eq!(first_notifications(&plan, Some(30), usize::MAX), expected);
        assert_eq!(
            first_notifications(&plan, Some(10 * count), usize::MAX).len(),
            count
        );
        // At most `--presign`: the first ones sent.
        assert_eq!(first_notifications(&plan, None, 7), expected[..7]);
    }

    #[test]
    fn counters_and_receipts_are_compared_unless_requests_failed() {
        let campaigns = vec!["c0".to_owned(), "c1".to_owned()];
        let expected = vec![
            Counters {
                total: 2,
                ..Counters::default()
            },
            Counters {
                total: 3,
                ..Counters::default()
            },
        ];
        let metrics = |second: u64| {
            vec![
                Metrics {
                    counters: expected[0].clone(),
                    version: 1,
                },
                Metrics {
                    counters: Counters {
                        total: second,
                        ..Counters::default()
                    },
                    version: 1,
                },
            ]
        };
        let receipts = Receipts {
            received: 4,
            applied: 3,
            duplicates: 1,
            expected_applied: 3,
            expected_duplicates: 1,
            ..Receipts::default()
        };
        let ingest = Ingest {
            acknowledged_statuses: 4,
            ..Ingest::default()
        };
        let good = check(&campaigns, &metrics(3), &expected, &receipts, &ingest);
        assert!(good.passed(), "{good:?}");
        assert_eq!(good.matched, 2);
        assert_eq!(good.expected_total.total, 5);

        let bad = check(&campaigns, &metrics(4), &expected, &receipts, &ingest);
        assert!(!bad.passed());
        assert_eq!(bad.mismatches.len(), 1);
        assert!(
            bad.mismatches[0].starts_with("campaign c1"),
            "{:?}",
            bad.mismatches
        );

        let wrong_receipts = Receipts {
            duplicates: 0,
            ..receipts.clone()
        };
        let bad = check(&campaigns, &metrics(3), &expected, &wrong_receipts, &ingest);
        assert_eq!(
            bad.receipt_mismatches,
            ["receipts: duplicates 0, expected 1"]
        );

        let failed = Ingest {
            errors: 2,
            ..ingest.clone()
        };
        let skipped = check(&campaigns, &metrics(4), &expected, &receipts, &failed);
        assert!(skipped.skipped.is_some() && !skipped.passed());
    }
}
