//! `statushub simulate`: registers a demo campaign on a running hub, then
//! plays signed provider webhooks against it at a chosen rate, so a
//! newcomer can watch the debug page move.
//!
//! `--channel` picks the feed:
//!
//! - `whatsapp` (the default): Meta-shaped status webhooks signed with the
//!   app secret (`X-Hub-Signature-256`), up to 50 statuses a call. Most
//!   messages are read, some only delivered, a few stay sent or fail.
//! - `email`: SES event-publishing events (`Send`, `Delivery`, `Open`,
//!   `Click`, `Bounce`, `Complaint`), each in its own SNS `Notification`
//!   as SNS sends them, signed with SignatureVersion 2 (SHA256withRSA over
//!   AWS's canonical string). The hub trusts the key through `SNS_CERT_DIR`:
//!   simulate keeps an RSA-2048 key and a self-signed certificate in that
//!   directory (made once, then reused) and names the certificate in
//!   `SigningCertURL`, so a hub started with the same directory verifies
//!   every message offline. Most emails go Send → Delivery → Open, some are
//!   clicked, a few bounce or draw a complaint.
//! - `both`: the two at once, as campaigns `<campaign>-whatsapp` and
//!   `<campaign>-email`, sharing the rate.
//!
//! Both feeds misbehave the way the providers do: a read (`Open`) sometimes
//! arrives before its delivery, and about one notification in twenty is
//! delivered twice (an SNS redelivery keeps its `MessageId`, so the hub
//! counts it as a duplicate). The run is bounded (a fixed plan of statuses)
//! and stops by itself, printing each campaign's counters.

mod args;
mod cert_dir;
mod client;
mod payloads;
mod plan;
pub mod sns_signer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::StreamExt as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use serde_json::Value;

pub use args::{SNS_TOPIC_ARN, SimulateArgs, SimulateChannel};
pub use cert_dir::{SNS_CERT_NAME, SNS_KEY_NAME};
pub use payloads::{SesEmail, ses_event_json};

use crate::clock::now_ms;
use cert_dir::CertOrigin;
use client::Sender;
use plan::{Feed, Plan, Play, Track, calls, interleave, plan, stretch};
use sns_signer::SnsSigner;

/// Most webhook calls waiting for the hub at once.
const MAX_IN_FLIGHT: usize = 16;
/// Most statuses sent before progress is reported again.
const MAX_WINDOW: usize = 5_000;

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
    let feeds = feeds(&args)?;
    let sns = sns_signer(&args, feeds)?;
    let admin_token = crate::secrets::admin_token(&args.data_dir, &args.admin_token)?;
    let whatsapp_secret = if feeds.contains(&Feed::WhatsApp) {
        Some(crate::secrets::whatsapp_webhook_secret(
            &args.data_dir,
            &args.whatsapp_webhook_secret,
        )?)
    } else {
        None
    };
    let base = args.campaign.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("demo-{}", &id[..8])
    });
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let client = client::http_client()?;
    let mut tracks = tracks(&args, feeds, &base);
    announce(&args, &tracks, seed);
    for track in &tracks {
        client::register(&client, &args, &admin_token, track).await?;
    }
    let plays = plan_run(&args, &mut tracks, &mut rng);
    let sender = Sender::new(client.clone(), &args, whatsapp_secret, sns)?;
    play(&sender, &tracks, &plays, args.rate).await?;
    report(&client, &args, &admin_token, &tracks).await
}

/// Checks `--url` and returns the feeds `--channel` names.
fn feeds(args: &SimulateArgs) -> anyhow::Result<&'static [Feed]> {
    if !matches!(args.url.scheme(), "http" | "https") {
        bail!("--url must be an http or https url");
    }
    Ok(match args.channel {
        SimulateChannel::Whatsapp => &[Feed::WhatsApp],
        SimulateChannel::Email => &[Feed::Email],
        SimulateChannel::Both => &[Feed::WhatsApp, Feed::Email],
    })
}

/// Returns the SNS signer when email is played: simulate's key and
/// certificate in `--sns-cert-dir`, made there the first time.
fn sns_signer(args: &SimulateArgs, feeds: &[Feed]) -> anyhow::Result<Option<Arc<SnsSigner>>> {
    if !feeds.contains(&Feed::Email) {
        return Ok(None);
    }
    let Some(dir) = &args.sns_cert_dir else {
        bail!(
            "email needs an sns signing certificate the hub trusts: start the hub with \
             SNS_CERT_DIR set to a directory (for example SNS_CERT_DIR=.statushub/sns-certs) \
             and pass the same directory to simulate as --sns-cert-dir (or SNS_CERT_DIR)"
        );
    };
    let (signer, origin) = cert_dir::load_or_create(dir)?;
    let path = dir.join(SNS_CERT_NAME);
    match origin {
        CertOrigin::Reused => println!("signing sns messages with {}", path.display()),
        CertOrigin::Created => println!(
            "made an sns signing certificate at {} (kept for later runs)",
            path.display()
        ),
        CertOrigin::Replaced => println!(
            "replaced {}, which did not match the key: restart a hub that already \
             loaded it",
            path.display()
        ),
    }
    Ok(Some(Arc::new(signer)))
}

/// Returns one track per feed: campaign `base` (`<base>-<channel>` when
/// several feeds play) with its provider message ids.
fn tracks(args: &SimulateArgs, feeds: &[Feed], base: &str) -> Vec<Track> {
    let messages = args.messages as usize;
    feeds
        .iter()
        .map(|&feed| {
            let campaign = if feeds.len() > 1 {
                format!("{base}-{}", feed.channel())
            } else {
                base.to_owned()
            };
            let ids = (0..messages)
                .map(|index| payloads::provider_message_id(feed, &args.tenant, &campaign, index))
                .collect();
            Track {
                feed,
                campaign,
                ids,
                sent_ms: Vec::new(),
            }
        })
        .collect()
}

/// Says what is about to be simulated.
fn announce(args: &SimulateArgs, tracks: &[Track], seed: u64) {
    let campaigns: Vec<String> = tracks
        .iter()
        .map(|track| {
            format!(
                "campaign {} ({} {} messages)",
                track.campaign,
                args.messages,
                track.feed.channel()
            )
        })
        .collect();
    println!(
        "simulating tenant {}, {} at {} statuses/s against {} (seed {seed})",
        args.tenant,
        campaigns.join(" and "),
        args.rate,
        args.url
    );
}

/// Plans every track's statuses from now, records when each message was
/// sent, and returns all statuses in playing order.
fn plan_run(args: &SimulateArgs, tracks: &mut [Track], rng: &mut StdRng) -> Vec<Play> {
    let messages = args.messages as usize;
    let start_ms = now_ms();
    let mut plans: Vec<Plan> = tracks
        .iter()
        .map(|track| plan(track.feed, messages, args.rate, start_ms, &mut *rng))
        .collect();
    let total: usize = plans.iter().map(|plan| plan.plays.len()).sum();
    let shared = tracks.len() > 1;
    for (track, plan) in tracks.iter_mut().zip(&mut plans) {
        if shared {
            // The feeds share the rate, so each takes the whole run.
            stretch(
                plan,
                start_ms,
                total as f64 / plan.plays.len().max(1) as f64,
            );
        }
        println!(
            "playing {} {} statuses ({} redeliveries, {} {}) for campaign {}",
            plan.plays.len(),
            track.feed.channel(),
            plan.redeliveries,
            plan.read_first,
            track.feed.read_first_label(),
            track.campaign
        );
        track.sent_ms = std::mem::take(&mut plan.sent_ms);
    }
    println!(
        "about {:.0} s at {} statuses/s",
        total as f64 / args.rate,
        args.rate
    );
    interleave(plans.into_iter().map(|plan| plan.plays).collect())
}

/// Plays `plays` at `rate` statuses per second, reporting progress and
/// what the hub's receipts add up to.
///
/// Everything due by now goes out (at most MAX_WINDOW statuses, so a run
/// that falls behind still reports progress) in the webhook calls
/// [`plan::calls`] makes of it, up to MAX_IN_FLIGHT calls at a time, as the
/// providers deliver concurrently.
async fn play(sender: &Sender, tracks: &[Track], plays: &[Play], rate: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut next = 0;
    let mut last_progress = Instant::now();
    while next < plays.len() {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1)
            .min(plays.len())
            .min(next + MAX_WINDOW);
        let calls = calls(&plays[next..due]);
        let mut replies = futures_util::stream::iter(calls.iter().map(|call| async {
            let feed = call.first().map_or(Feed::WhatsApp, |play| play.feed);
            let track = track_of(tracks, feed)?;
            let receipt = sender.send(track, call).await?;
            anyhow::Ok((receipt, call.len()))
        }))
        .buffer_unordered(MAX_IN_FLIGHT);
        while let Some(reply) = replies.next().await {
            let (receipt, statuses) = reply?;
            tally.add(&receipt, statuses);
            let finished = tally.statuses as usize == plays.len();
            if last_progress.elapsed() >= Duration::from_secs(1) || finished {
                last_progress = Instant::now();
                println!(
                    "  [{:>5.1}s] {}/{} statuses · applied {} · duplicates {} · unmatched {}",
                    started.elapsed().as_secs_f64(),
                    tally.statuses,
                    plays.len(),
                    tally.applied,
                    tally.duplicates,
                    tally.unmatched
                );
            }
        }
        next = due;
        if next < plays.len() {
            let next_at = started + Duration::from_secs_f64(next as f64 / rate);
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
    Ok(())
}

/// Returns the track of `feed`.
fn track_of(tracks: &[Track], feed: Feed) -> anyhow::Result<&Track> {
    tracks
        .iter()
        .find(|track| track.feed == feed)
        .ok_or_else(|| anyhow!("no campaign plays {} statuses", feed.channel()))
}

/// Prints each campaign's counters as the hub now reports them.
async fn report(
    client: &reqwest::Client,
    args: &SimulateArgs,
    admin_token: &str,
    tracks: &[Track],
) -> anyhow::Result<()> {
    for track in tracks {
        let metrics = client::fetch_metrics(client, args, admin_token, &track.campaign).await?;
        let count = |key: &str| metrics.get(key).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "campaign {}: total {} · sent {} · delivered {} · read {} · failed {} · clicked {} · complained {} (version {})",
            track.campaign,
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
    }
    Ok(())
}
