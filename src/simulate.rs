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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use reqwest::{StatusCode, Url};
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use rsa::signature::{Keypair as _, SignatureEncoding as _, Signer as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{DecodePem as _, Encode as _, EncodePem as _};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

use crate::cli::{SimulateArgs, SimulateChannel};
use crate::store::{format_ms, now_ms};
use crate::webhooks::ses::SnsEnvelope;
use crate::webhooks::whatsapp::signature;

/// The SNS topic simulated SES events come from, unless `--sns-topic-arn`
/// names another.
pub const SNS_TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:statushub-simulate";
/// File name of simulate's self-signed SNS signing certificate in the cert
/// dir: the last path segment of its `SigningCertURL`, which is where the
/// hub looks for it.
pub const SNS_CERT_NAME: &str = "SimpleNotificationService-statushub-simulate.pem";
/// File name of simulate's private key beside the certificate (PKCS#8 PEM,
/// mode 0600). Not a `.pem`, so no `SigningCertURL` can name it.
pub const SNS_KEY_NAME: &str = "statushub-simulate.key";
/// `SigningCertURL` of every simulated notification: a URL the hub accepts
/// (https, `sns.<region>.amazonaws.com`, `.pem`) and whose last segment is
/// [`SNS_CERT_NAME`], so the hub finds the certificate in its cert dir and
/// never downloads it.
const SNS_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-statushub-simulate.pem";
/// Size of the generated RSA key.
const RSA_BITS: usize = 2048;
/// Lifetime of the generated certificate (the hub does not check it).
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Subject (and issuer) of the generated certificate.
const CERT_SUBJECT: &str = "CN=statushub simulate,O=statushub";
/// The `Subject` SES gives its event notifications.
const SES_SUBJECT: &str = "Amazon SES Email Event Notification";
/// The AWS account of the simulated SES identity and SNS topic.
const AWS_ACCOUNT: &str = "123456789012";
/// How long after an SES event SNS publishes it.
const SNS_DELAY_MS: i64 = 150;
/// The SMTP server that reports simulated deliveries and bounces.
const REPORTING_MTA: &str = "a8-30.smtp-out.amazonses.com";
/// The mail client that opens and clicks simulated emails.
const MAIL_USER_AGENT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

/// Messages registered per `POST /api/v1/messages`.
const REGISTER_CHUNK: usize = 1_000;
/// Most statuses in one WhatsApp webhook call (Meta batches some).
const MAX_PER_CALL: usize = 50;
/// Most webhook calls waiting for the hub at once.
const MAX_IN_FLIGHT: usize = 16;
/// Most statuses sent before progress is reported again.
const MAX_WINDOW: usize = 5_000;
/// Attempts per webhook call when the hub answers 503 or 429.
const MAX_ATTEMPTS: u32 = 6;
/// Longest pause honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Share of notifications delivered a second time.
const REDELIVERY: f64 = 0.05;
/// Share of read (opened) messages whose read (`Open`) arrives before their
/// delivery.
const READ_FIRST: f64 = 0.12;

/// A provider feed simulate plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// Meta's WhatsApp status webhooks.
    WhatsApp,
    /// SES events through SNS.
    Email,
}

impl Feed {
    /// The registration channel and the name in campaign ids.
    fn channel(self) -> &'static str {
        match self {
            Feed::WhatsApp => "whatsapp",
            Feed::Email => "email",
        }
    }

    /// What a read that arrives before its delivery is called, for the log.
    fn read_first_label(self) -> &'static str {
        match self {
            Feed::WhatsApp => "read before delivered",
            Feed::Email => "Open before Delivery",
        }
    }

    /// Returns the recipient of message `index`, as registered and as the
    /// provider reports it.
    fn recipient(self, index: usize) -> String {
        match self {
            Feed::WhatsApp => format!("1555{index:07}"),
            Feed::Email => format!("demo+{index:06}@example.com"),
        }
    }
}

/// One status notification to play.
#[derive(Clone, Debug, PartialEq)]
struct Play {
    feed: Feed,
    /// Index of the message in its campaign.
    message: usize,
    /// WhatsApp status (`sent`, …) or SES event type (`Send`, …).
    status: &'static str,
    /// Provider time, unix milliseconds.
    timestamp_ms: i64,
    /// A second delivery of a notification already played.
    redelivery: bool,
}

/// The statuses of one feed to play, in sending order, and what makes them
/// interesting.
#[derive(Debug)]
struct Plan {
    plays: Vec<Play>,
    read_first: usize,
    redeliveries: usize,
    /// When each message was sent, unix milliseconds.
    sent_ms: Vec<i64>,
}

/// One campaign being played.
#[derive(Debug)]
struct Track {
    feed: Feed,
    campaign: String,
    /// Provider message ids, by message index.
    ids: Vec<String>,
    /// When each message was sent, unix milliseconds (the SES `mail.timestamp`).
    sent_ms: Vec<i64>,
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
    let feeds: &[Feed] = match args.channel {
        SimulateChannel::Whatsapp => &[Feed::WhatsApp],
        SimulateChannel::Email => &[Feed::Email],
        SimulateChannel::Both => &[Feed::WhatsApp, Feed::Email],
    };
    let sns = if feeds.contains(&Feed::Email) {
        let Some(dir) = &args.sns_cert_dir else {
            bail!(
                "email needs an sns signing certificate the hub trusts: start the hub with \
                 SNS_CERT_DIR set to a directory (for example SNS_CERT_DIR=.statushub/sns-certs) \
                 and pass the same directory to simulate as --sns-cert-dir (or SNS_CERT_DIR)"
            );
        };
        let (signer, origin) = SnsSigner::load_or_create(dir)?;
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
        Some(Arc::new(signer))
    } else {
        None
    };
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("statushub-simulate/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the http client")?;
    let messages = args.messages as usize;
    let mut tracks: Vec<Track> = feeds
        .iter()
        .map(|&feed| {
            let campaign = if feeds.len() > 1 {
                format!("{base}-{}", feed.channel())
            } else {
                base.clone()
            };
            let ids = (0..messages)
                .map(|index| provider_message_id(feed, &args.tenant, &campaign, index))
                .collect();
            Track {
                feed,
                campaign,
                ids,
                sent_ms: Vec::new(),
            }
        })
        .collect();

    let campaigns: Vec<String> = tracks
        .iter()
        .map(|track| {
            format!(
                "campaign {} ({messages} {} messages)",
                track.campaign,
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

    for track in &tracks {
        register(&client, &args, &admin_token, track).await?;
    }

    let start_ms = now_ms();
    let mut plans: Vec<Plan> = feeds
        .iter()
        .map(|&feed| plan(feed, messages, args.rate, start_ms, &mut rng))
        .collect();
    let total: usize = plans.iter().map(|plan| plan.plays.len()).sum();
    for (track, plan) in tracks.iter_mut().zip(&mut plans) {
        if feeds.len() > 1 {
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
    let plays = interleave(plans.into_iter().map(|plan| plan.plays).collect());

    let sender = Sender {
        client: client.clone(),
        whatsapp_url: endpoint(&args.url, &["webhooks", "whatsapp"])?,
        email_url: endpoint(&args.url, &["webhooks", "email"])?,
        whatsapp_secret,
        ses_secret: args
            .ses_webhook_secret
            .as_ref()
            .map(|secret| secret.expose_secret().to_owned()),
        sns,
        sns_cert_dir: args.sns_cert_dir.clone(),
        topic_arn: args.sns_topic_arn.clone(),
        tenant: args.tenant.clone(),
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut next = 0;
    let mut last_progress = Instant::now();
    while next < plays.len() {
        // Everything due by now goes out (at most MAX_WINDOW statuses, so a
        // run that falls behind still reports progress): WhatsApp statuses in
        // calls of at most MAX_PER_CALL, each SES event in its own SNS
        // notification, up to MAX_IN_FLIGHT calls at a time, as the providers
        // deliver concurrently.
        let due = ((started.elapsed().as_secs_f64() * args.rate) as usize + 1)
            .min(plays.len())
            .min(next + MAX_WINDOW);
        let calls = calls(&plays[next..due]);
        let mut replies = futures_util::stream::iter(calls.iter().map(|call| async {
            let feed = call.first().map_or(Feed::WhatsApp, |play| play.feed);
            let track = track_of(&tracks, feed)?;
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

    for track in &tracks {
        let metrics = fetch_metrics(&client, &args, &admin_token, &track.campaign).await?;
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

/// Splits due statuses into webhook calls: WhatsApp statuses in order, at
/// most MAX_PER_CALL a call; one SES event per SNS notification.
fn calls(due: &[Play]) -> Vec<Vec<Play>> {
    let (whatsapp, email): (Vec<&Play>, Vec<&Play>) =
        due.iter().partition(|play| play.feed == Feed::WhatsApp);
    whatsapp
        .chunks(MAX_PER_CALL)
        .map(|chunk| chunk.iter().map(|&play| play.clone()).collect())
        .chain(email.into_iter().map(|play| vec![play.clone()]))
        .collect()
}

/// Returns the track of `feed`.
fn track_of(tracks: &[Track], feed: Feed) -> anyhow::Result<&Track> {
    tracks
        .iter()
        .find(|track| track.feed == feed)
        .ok_or_else(|| anyhow!("no campaign plays {} statuses", feed.channel()))
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

/// Returns 32 bytes derived from `parts`, for ids a rerun of the same
/// campaign repeats (its registrations are then "already known").
fn derive(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

/// Returns a version 4 UUID made of the first 16 bytes of `bytes`.
fn uuid_of(bytes: &[u8; 32]) -> uuid::Uuid {
    let mut random = [0u8; 16];
    random.copy_from_slice(&bytes[..16]);
    uuid::Builder::from_random_bytes(random).into_uuid()
}

/// Returns the provider's id of message `index`: a `wamid.` for WhatsApp,
/// an id shaped like SES's (`010001…-<uuid>-000000`) for email.
fn provider_message_id(feed: Feed, tenant: &str, campaign: &str, index: usize) -> String {
    match feed {
        Feed::WhatsApp => format!("wamid.{campaign}.{index:06}"),
        Feed::Email => {
            let bytes = derive(&["ses", tenant, campaign, &index.to_string()]);
            format!(
                "010001{}-{}-000000",
                hex::encode(&bytes[16..21]),
                uuid_of(&bytes)
            )
        }
    }
}

/// Returns the SNS `MessageId` of the notification of `status` for message
/// `index`: the same for a redelivery, distinct otherwise.
fn sns_message_id(tenant: &str, campaign: &str, index: usize, status: &str) -> String {
    uuid_of(&derive(&[
        "sns",
        tenant,
        campaign,
        &index.to_string(),
        status,
    ]))
    .to_string()
}

/// Registers a campaign's messages as the admin.
async fn register(
    client: &reqwest::Client,
    args: &SimulateArgs,
    admin_token: &str,
    track: &Track,
) -> anyhow::Result<()> {
    let url = endpoint(&args.url, &["api", "v1", "messages"])?;
    let (mut registered, mut existing) = (0, 0);
    for (chunk_index, chunk) in track.ids.chunks(REGISTER_CHUNK).enumerate() {
        let messages: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(offset, id)| {
                let index = chunk_index * REGISTER_CHUNK + offset;
                json!({
                    "tenant_id": args.tenant, "campaign_id": track.campaign,
                    "channel": track.feed.channel(), "provider_message_id": id,
                    "recipient": track.feed.recipient(index),
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
        "registered {} messages in campaign {} ({} channel: {registered} new, {existing} already known)",
        track.ids.len(),
        track.campaign,
        track.feed.channel()
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

/// Posts signed webhook calls to the hub, the way each provider does.
struct Sender {
    client: reqwest::Client,
    whatsapp_url: Url,
    email_url: Url,
    /// The Meta app secret; present when WhatsApp is played.
    whatsapp_secret: Option<String>,
    /// The hub's `SES_WEBHOOK_SECRET`, sent as the basic-auth password.
    ses_secret: Option<String>,
    /// Present when email is played.
    sns: Option<Arc<SnsSigner>>,
    sns_cert_dir: Option<PathBuf>,
    topic_arn: String,
    tenant: String,
}

impl Sender {
    /// Posts `plays` of `track` in one call (one play for email) and
    /// returns the hub's receipt, retrying while the hub asks to (503/429).
    async fn send(&self, track: &Track, plays: &[Play]) -> anyhow::Result<Value> {
        let (url, body, headers) = match track.feed {
            Feed::WhatsApp => {
                let secret = self
                    .whatsapp_secret
                    .as_deref()
                    .context("no whatsapp app secret")?;
                let body = whatsapp_payload(plays, &track.ids)?;
                let header = signature::sign(secret.as_bytes(), &body);
                let headers = vec![
                    ("content-type", "application/json".to_owned()),
                    ("x-hub-signature-256", header),
                ];
                (&self.whatsapp_url, body, headers)
            }
            Feed::Email => {
                let [play] = plays else {
                    bail!("an sns notification carries one ses event");
                };
                let signer = Arc::clone(self.sns.as_ref().context("no sns signing key")?);
                let message_id =
                    sns_message_id(&self.tenant, &track.campaign, play.message, play.status);
                let message = serde_json::to_string(&ses_event(play, track)?)?;
                let timestamp = format_ms(play.timestamp_ms + SNS_DELAY_MS);
                // RSA signing is CPU work: off the runtime thread, so the
                // calls in flight sign in parallel.
                let (topic_arn, id) = (self.topic_arn.clone(), message_id.clone());
                let body = tokio::task::spawn_blocking(move || {
                    signer.notification(&topic_arn, &id, message, timestamp)
                })
                .await
                .context("the sns signing task failed")??;
                let headers = vec![
                    ("content-type", "text/plain; charset=UTF-8".to_owned()),
                    ("x-amz-sns-message-type", "Notification".to_owned()),
                    ("x-amz-sns-message-id", message_id),
                    ("x-amz-sns-topic-arn", self.topic_arn.clone()),
                ];
                (&self.email_url, body, headers)
            }
        };
        let mut attempt = 1;
        loop {
            let mut request = self.client.post(url.clone()).body(body.clone());
            for (name, value) in &headers {
                request = request.header(*name, value);
            }
            if let (Feed::Email, Some(secret)) = (track.feed, &self.ses_secret) {
                request = request.basic_auth("sns", Some(secret));
            }
            let response = request.send().await.with_context(|| {
                format!("failed to reach the hub's {} webhook", track.feed.channel())
            })?;
            let status = response.status();
            if status.is_success() {
                return response.json().await.context("unreadable webhook receipt");
            }
            let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::TOO_MANY_REQUESTS;
            if !retryable || attempt >= MAX_ATTEMPTS {
                let text = response.text().await.unwrap_or_default();
                return Err(self.refusal(track.feed, status, text.trim()));
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

    /// Explains a refused webhook call.
    fn refusal(&self, feed: Feed, status: StatusCode, text: &str) -> anyhow::Error {
        let cert_dir = self
            .sns_cert_dir
            .as_deref()
            .map_or_else(|| "<dir>".to_owned(), |dir| dir.display().to_string());
        match (feed, status) {
            (Feed::WhatsApp, StatusCode::UNAUTHORIZED) => anyhow!(
                "the hub refused the webhook signature (401): WHATSAPP_WEBHOOK_SECRET differs \
                 from the hub's"
            ),
            (Feed::Email, StatusCode::UNAUTHORIZED) => anyhow!(
                "the hub refused the sns message (401: {text}): start the hub with \
                 SNS_CERT_DIR={cert_dir}, the directory simulate signs from (restart it if \
                 simulate replaced its certificate), and give simulate the hub's \
                 SES_WEBHOOK_SECRET if it has one"
            ),
            (Feed::Email, StatusCode::FORBIDDEN) => anyhow!(
                "the hub refused the sns topic {} (403): add it to the hub's SNS_TOPIC_ARNS, or \
                 pass an accepted topic as --sns-topic-arn",
                self.topic_arn
            ),
            (Feed::Email, StatusCode::SERVICE_UNAVAILABLE) => anyhow!(
                "the email webhook answered {status} {MAX_ATTEMPTS} times ({text}): a hub \
                 started without SNS_CERT_DIR={cert_dir} cannot find simulate's certificate"
            ),
            (feed, status) => anyhow!("the {} webhook answered {status}: {text}", feed.channel()),
        }
    }
}

/// Returns a Meta-shaped webhook body carrying `plays`.
fn whatsapp_payload(plays: &[Play], ids: &[String]) -> anyhow::Result<Vec<u8>> {
    let statuses: Vec<Value> = plays
        .iter()
        .map(|play| {
            let mut status = json!({
                "id": ids[play.message],
                "status": play.status,
                "timestamp": play.timestamp_ms.div_euclid(1_000).to_string(),
                "recipient_id": Feed::WhatsApp.recipient(play.message),
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

/// Returns the SES event-publishing JSON of `play` (the SNS `Message`),
/// shaped like AWS's documented examples.
fn ses_event(play: &Play, track: &Track) -> anyhow::Result<Value> {
    let id = &track.ids[play.message];
    let sent_ms = track
        .sent_ms
        .get(play.message)
        .copied()
        .unwrap_or(play.timestamp_ms);
    let recipient = Feed::Email.recipient(play.message);
    let at = format_ms(play.timestamp_ms);
    let from = "Statushub Demo <demo@example.com>";
    let subject = format!("Your {} update", track.campaign);
    let feedback_id = format!(
        "{}-000000",
        sns_message_id("feedback", &track.campaign, play.message, play.status)
    );
    let (key, object) = match play.status {
        "Send" => ("send", json!({})),
        "Delivery" => (
            "delivery",
            json!({
                "timestamp": at,
                "processingTimeMillis": (play.timestamp_ms - sent_ms).max(0),
                "recipients": [recipient],
                "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": REPORTING_MTA,
            }),
        ),
        "Open" => (
            "open",
            json!({"ipAddress": "192.0.2.1", "timestamp": at, "userAgent": MAIL_USER_AGENT}),
        ),
        "Click" => (
            "click",
            json!({
                "ipAddress": "192.0.2.1",
                "link": "https://example.com/offers",
                "linkTags": {"campaign": [track.campaign]},
                "timestamp": at,
                "userAgent": MAIL_USER_AGENT,
            }),
        ),
        "Bounce" => (
            "bounce",
            json!({
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [{
                    "emailAddress": recipient,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }],
                "timestamp": at,
                "feedbackId": feedback_id,
                "reportingMTA": format!("dsn; {REPORTING_MTA}"),
            }),
        ),
        "Complaint" => (
            "complaint",
            json!({
                "complainedRecipients": [{"emailAddress": recipient}],
                "timestamp": at,
                "feedbackId": feedback_id,
                "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
                "complaintFeedbackType": "abuse",
                "arrivalDate": at,
            }),
        ),
        other => bail!("no ses event for status {other:?}"),
    };
    let mut event = json!({
        "eventType": play.status,
        "mail": {
            "timestamp": format_ms(sent_ms),
            "source": from,
            "sourceArn": format!("arn:aws:ses:us-east-1:{AWS_ACCOUNT}:identity/example.com"),
            "sendingAccountId": AWS_ACCOUNT,
            "messageId": id,
            "destination": [recipient],
            "headersTruncated": false,
            "headers": [
                {"name": "From", "value": from},
                {"name": "To", "value": recipient},
                {"name": "Subject", "value": subject},
                {"name": "MIME-Version", "value": "1.0"},
                {"name": "Content-Type", "value": "text/html; charset=UTF-8"},
            ],
            "commonHeaders": {
                "from": [from],
                "to": [recipient],
                "messageId": id,
                "subject": subject,
            },
            "tags": {
                "ses:configuration-set": ["statushub-simulate"],
                "ses:source-ip": ["192.0.2.0"],
                "ses:from-domain": ["example.com"],
                "ses:caller-identity": ["statushub-simulate"],
                "campaign": [track.campaign],
            },
        },
    });
    event[key] = object;
    Ok(event)
}

/// What [`SnsSigner::load_or_create`] found in the cert dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CertOrigin {
    /// The certificate matched the key and was kept.
    Reused,
    /// There was no certificate; one was made.
    Created,
    /// The certificate did not match the key (or was unreadable) and was
    /// replaced; a hub that already loaded it must be restarted.
    Replaced,
}

/// Signs SNS notifications with simulate's RSA key, whose self-signed
/// certificate lies in the hub's `SNS_CERT_DIR`.
struct SnsSigner {
    key: SigningKey<Sha256>,
}

impl SnsSigner {
    /// Loads the key and certificate from `dir` (created if needed), making
    /// what is missing: an RSA-2048 key, written once with mode 0600, and a
    /// self-signed certificate for it, rewritten when it does not match the
    /// key.
    fn load_or_create(dir: &Path) -> anyhow::Result<(Self, CertOrigin)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the sns cert dir {}", dir.display()))?;
        let private = load_or_create_key(&dir.join(SNS_KEY_NAME))?;
        let public = RsaPublicKey::from(&private);
        let key = SigningKey::<Sha256>::new(private);
        let cert_path = dir.join(SNS_CERT_NAME);
        let origin = match std::fs::read(&cert_path) {
            Ok(pem) if certificate_key(&pem).as_ref() == Some(&public) => {
                return Ok((SnsSigner { key }, CertOrigin::Reused));
            }
            Ok(_) => CertOrigin::Replaced,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => CertOrigin::Created,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("failed to read {}", cert_path.display()));
            }
        };
        let pem = self_signed_certificate(&key)?;
        write_replacing(&cert_path, pem.as_bytes())?;
        Ok((SnsSigner { key }, origin))
    }

    /// Returns the body of a signed SNS `Notification` (SignatureVersion 2)
    /// carrying `message`, as SNS posts it.
    fn notification(
        &self,
        topic_arn: &str,
        message_id: &str,
        message: String,
        timestamp: String,
    ) -> anyhow::Result<Vec<u8>> {
        let mut envelope = SnsEnvelope {
            r#type: "Notification".to_owned(),
            message_id: message_id.to_owned(),
            topic_arn: topic_arn.to_owned(),
            subject: Some(SES_SUBJECT.to_owned()),
            message,
            timestamp,
            signature_version: "2".to_owned(),
            signature: String::new(),
            signing_cert_url: SNS_CERT_URL.to_owned(),
            subscribe_url: None,
            token: None,
            unsubscribe_url: Some(format!(
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:statushub-simulate"
            )),
        };
        // AWS's canonical string, as the hub rebuilds it to verify.
        let signed = envelope.string_to_sign()?;
        let signature: Signature = self
            .key
            .try_sign(signed.as_bytes())
            .map_err(|error| anyhow!("failed to sign an sns message: {error}"))?;
        envelope.signature = STANDARD.encode(signature.to_bytes());
        let body = json!({
            "Type": envelope.r#type,
            "MessageId": envelope.message_id,
            "TopicArn": envelope.topic_arn,
            "Subject": envelope.subject,
            "Message": envelope.message,
            "Timestamp": envelope.timestamp,
            "SignatureVersion": envelope.signature_version,
            "Signature": envelope.signature,
            "SigningCertURL": envelope.signing_cert_url,
            "UnsubscribeURL": envelope.unsubscribe_url,
        });
        Ok(serde_json::to_vec(&body)?)
    }
}

/// Reads the PKCS#8 PEM key at `path`, or generates an RSA-2048 key and
/// writes it there (mode 0600, never overwriting a file).
fn load_or_create_key(path: &Path) -> anyhow::Result<RsaPrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            return RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|error| {
                anyhow!(
                    "cannot read the sns signing key {}: {error} (delete it, and the \
                     certificate beside it, to make new ones)",
                    path.display()
                )
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", path.display()));
        }
    }
    println!(
        "generating an rsa-{RSA_BITS} sns signing key at {} (once)",
        path.display()
    );
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
        .map_err(|error| anyhow!("failed to generate an rsa key: {error}"))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| anyhow!("failed to encode the rsa key: {error}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(key)
}

/// Returns a PEM self-signed X.509 certificate for `key`'s public key,
/// signed by `key` (SHA256withRSA).
fn self_signed_certificate(key: &SigningKey<Sha256>) -> anyhow::Result<String> {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key())
        .map_err(|error| anyhow!("failed to encode the public key: {error}"))?;
    // A positive serial number, random so that replaced certificates differ.
    let serial = SerialNumber::from((rand::random::<u64>() >> 1) | 1);
    let validity = Validity::from_now(CERT_VALIDITY)
        .map_err(|error| anyhow!("failed to date the certificate: {error}"))?;
    let subject: Name = CERT_SUBJECT
        .parse()
        .map_err(|error| anyhow!("invalid certificate subject: {error}"))?;
    let builder = CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, key)
        .map_err(|error| anyhow!("failed to prepare the certificate: {error}"))?;
    let certificate = builder
        .build::<Signature>()
        .map_err(|error| anyhow!("failed to sign the certificate: {error}"))?;
    certificate
        .to_pem(LineEnding::LF)
        .map_err(|error| anyhow!("failed to encode the certificate: {error}"))
}

/// Returns the RSA public key of a PEM certificate, if it holds one.
fn certificate_key(pem: &[u8]) -> Option<RsaPublicKey> {
    let certificate = Certificate::from_pem(pem).ok()?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .ok()?;
    RsaPublicKey::from_public_key_der(&spki).ok()
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a hub
/// reading the directory never sees half a file.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .context("certificate path has no file name")?;
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("failed to create {}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("failed to write {}", path.display()))
}

/// (arrival, provider time, message, status), times in "run units" (0..~1.5).
type Event = (f64, f64, usize, &'static str);

/// Returns when a notification about something at `at` arrives.
fn arrive(at: f64, rng: &mut StdRng) -> f64 {
    at + rng.gen_range(0.0..0.02)
}

/// Pushes the statuses of one WhatsApp message sent at `sent`: most are
/// read, some only delivered, a few stay sent or fail. Returns whether its
/// `read` arrives before its `delivered`.
fn whatsapp_lifecycle(
    message: usize,
    sent: f64,
    rng: &mut StdRng,
    events: &mut Vec<Event>,
) -> bool {
    let fate: f64 = rng.gen_range(0.0..1.0);
    if fate < 0.04 {
        // Failed; half of them were first reported sent.
        let failed = sent + rng.gen_range(0.02..0.2);
        if rng.gen_bool(0.5) {
            events.push((arrive(sent, rng), sent, message, "sent"));
        }
        events.push((arrive(failed, rng), failed, message, "failed"));
        return false;
    }
    events.push((arrive(sent, rng), sent, message, "sent"));
    if fate < 0.07 {
        return false; // never delivered (phone off)
    }
    let delivered = sent + rng.gen_range(0.02..0.3);
    let delivered_arrival = arrive(delivered, rng);
    events.push((delivered_arrival, delivered, message, "delivered"));
    if fate < 0.25 {
        return false; // delivered, never read
    }
    let read = delivered + rng.gen_range(0.05..0.6);
    let first = rng.gen_bool(READ_FIRST);
    let read_arrival = if first {
        delivered_arrival - 0.001
    } else {
        arrive(read, rng)
    };
    events.push((read_arrival, read, message, "read"));
    first
}

/// Pushes the SES events of one email sent at `sent`: most go Send →
/// Delivery → Open, some are then clicked, a few bounce (instead of being
/// delivered) or draw a complaint, a few never get past Send. Returns
/// whether its `Open` arrives before its `Delivery`.
fn email_lifecycle(message: usize, sent: f64, rng: &mut StdRng, events: &mut Vec<Event>) -> bool {
    let fate: f64 = rng.gen_range(0.0..1.0);
    events.push((arrive(sent, rng), sent, message, "Send"));
    if fate < 0.03 {
        let bounced = sent + rng.gen_range(0.02..0.2);
        events.push((arrive(bounced, rng), bounced, message, "Bounce"));
        return false;
    }
    if fate < 0.05 {
        return false; // still deferred by the receiving server
    }
    let delivered = sent + rng.gen_range(0.02..0.3);
    let delivered_arrival = arrive(delivered, rng);
    events.push((delivered_arrival, delivered, message, "Delivery"));
    if fate < 0.30 {
        return false; // delivered, never opened
    }
    let opened = delivered + rng.gen_range(0.05..0.6);
    let first = rng.gen_bool(READ_FIRST);
    let open_arrival = if first {
        delivered_arrival - 0.001
    } else {
        arrive(opened, rng)
    };
    events.push((open_arrival, opened, message, "Open"));
    if fate < 0.33 {
        let complained = opened + rng.gen_range(0.05..0.3);
        events.push((arrive(complained, rng), complained, message, "Complaint"));
    } else if fate >= 0.72 {
        let clicked = opened + rng.gen_range(0.01..0.2);
        events.push((arrive(clicked, rng), clicked, message, "Click"));
    }
    first
}

/// Plans the statuses of `messages` messages of `feed` played at `rate` per
/// second from unix time `start_ms`.
///
/// Each status gets a provider time (when it happened) and an arrival time
/// (when its webhook comes); the plan is sorted by arrival, and a timestamp
/// is the provider time spread over the run. Reads that arrive first keep
/// their later provider time, as the providers' do.
fn plan(feed: Feed, messages: usize, rate: f64, start_ms: i64, rng: &mut StdRng) -> Plan {
    let mut events: Vec<Event> = Vec::new();
    let mut sent_at = Vec::with_capacity(messages);
    let mut read_first = 0;
    for message in 0..messages {
        let sent = message as f64 / messages.max(1) as f64 * 0.4 + rng.gen_range(0.0..0.05);
        sent_at.push(sent);
        let early = match feed {
            Feed::WhatsApp => whatsapp_lifecycle(message, sent, rng, &mut events),
            Feed::Email => email_lifecycle(message, sent, rng, &mut events),
        };
        read_first += usize::from(early);
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Timestamps: provider times mapped onto the run's expected duration.
    let duration_ms = events.len() as f64 / rate * 1_000.0;
    let last = events.iter().map(|event| event.1).fold(0.0_f64, f64::max);
    let scale = if last > 0.0 { duration_ms / last } else { 0.0 };
    let stamp = |at: f64| start_ms + (at * scale).round() as i64;
    let mut keyed: Vec<(f64, Play)> = Vec::with_capacity(events.len() + events.len() / 16);
    let mut redeliveries = 0;
    for (position, (_, at, message, status)) in events.into_iter().enumerate() {
        let play = Play {
            feed,
            message,
            status,
            timestamp_ms: stamp(at),
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
        sent_ms: sent_at.into_iter().map(stamp).collect(),
    }
}

/// Spreads a plan's timestamps `factor` times further from `start_ms` (a
/// feed that shares the rate with another takes longer).
fn stretch(plan: &mut Plan, start_ms: i64, factor: f64) {
    let spread = |ms: i64| start_ms + ((ms - start_ms) as f64 * factor).round() as i64;
    for play in &mut plan.plays {
        play.timestamp_ms = spread(play.timestamp_ms);
    }
    for sent in &mut plan.sent_ms {
        *sent = spread(*sent);
    }
}

/// Merges feeds into one sequence, each spread evenly over it and kept in
/// its own order.
fn interleave(feeds: Vec<Vec<Play>>) -> Vec<Play> {
    let mut keyed: Vec<(f64, Play)> = feeds
        .into_iter()
        .flat_map(|plays| {
            let len = plays.len() as f64;
            plays
                .into_iter()
                .enumerate()
                .map(move |(index, play)| ((index as f64 + 0.5) / len, play))
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, play)| play).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::domain::Status;
    use crate::webhooks::ses::{SnsError, SnsVerifier, parse_ses_message, sns_verify};

    const START_MS: i64 = 1_700_000_000_000;

    #[test]
    fn plan_is_bounded_realistic_and_misordered() {
        let mut rng = StdRng::seed_from_u64(42);
        let plan = plan(Feed::WhatsApp, 1_000, 50.0, START_MS, &mut rng);
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
        assert_eq!(plan.sent_ms.len(), 1_000);

        let mut statuses: HashMap<usize, Vec<&str>> = HashMap::new();
        for play in plan.plays.iter().filter(|play| !play.redelivery) {
            assert_eq!(play.feed, Feed::WhatsApp);
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

    /// Counts the `early` notifications played before their message's `late` one.
    fn early_arrivals(plays: &[Play], late: &str, early: &str) -> usize {
        let mut seen_late = HashSet::new();
        let mut count = 0;
        for play in plays {
            if play.status == late {
                seen_late.insert(play.message);
            } else if play.status == early && !play.redelivery && !seen_late.contains(&play.message)
            {
                count += 1;
            }
        }
        count
    }

    #[test]
    fn read_first_keeps_the_later_timestamp() {
        for (feed, delivered, read) in [
            (Feed::WhatsApp, "delivered", "read"),
            (Feed::Email, "Delivery", "Open"),
        ] {
            let mut rng = StdRng::seed_from_u64(7);
            let plan = plan(feed, 500, 100.0, START_MS, &mut rng);
            let early_reads = early_arrivals(&plan.plays, delivered, read);
            assert!(
                plan.read_first > 0 && early_reads >= plan.read_first,
                "{feed:?}"
            );
            let stamp = |status: &str| -> HashMap<usize, i64> {
                plan.plays
                    .iter()
                    .filter(|play| play.status == status)
                    .map(|play| (play.message, play.timestamp_ms))
                    .collect()
            };
            let (delivered_at, read_at) = (stamp(delivered), stamp(read));
            for (message, read) in read_at {
                assert!(
                    read >= delivered_at[&message],
                    "read stamped after delivered"
                );
            }
        }
    }

    #[test]
    fn email_plan_has_every_ses_lifecycle() {
        let mut rng = StdRng::seed_from_u64(42);
        let plan = plan(Feed::Email, 1_000, 50.0, START_MS, &mut rng);
        let mut events: HashMap<usize, Vec<&str>> = HashMap::new();
        for play in plan.plays.iter().filter(|play| !play.redelivery) {
            assert_eq!(play.feed, Feed::Email);
            events.entry(play.message).or_default().push(play.status);
        }
        assert_eq!(events.len(), 1_000);
        let with = |name: &str| events.values().filter(|e| e.contains(&name)).count();
        assert_eq!(with("Send"), 1_000, "every email is sent");
        assert!(
            (850..=1_000).contains(&with("Delivery")),
            "{}",
            with("Delivery")
        );
        assert!((600..=800).contains(&with("Open")), "{}", with("Open"));
        assert!((200..=350).contains(&with("Click")), "{}", with("Click"));
        assert!((10..=60).contains(&with("Bounce")), "{}", with("Bounce"));
        assert!(
            (10..=60).contains(&with("Complaint")),
            "{}",
            with("Complaint")
        );
        for lifecycle in events.values() {
            assert!(!(lifecycle.contains(&"Bounce") && lifecycle.contains(&"Delivery")));
            assert!(!lifecycle.contains(&"Click") || lifecycle.contains(&"Open"));
        }
        let expected = (plan.plays.len() - plan.redeliveries) as f64 * REDELIVERY;
        let redeliveries = plan.redeliveries as f64;
        assert!(redeliveries > expected * 0.6 && redeliveries < expected * 1.4);
        assert!(plan.read_first > 30, "{}", plan.read_first);
        // A Send is stamped when the email was sent (its `mail.timestamp`).
        for play in plan.plays.iter().filter(|play| play.status == "Send") {
            assert_eq!(play.timestamp_ms, plan.sent_ms[play.message]);
        }
    }

    #[test]
    fn feeds_interleave_in_their_own_order_and_stretch_over_the_run() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut whatsapp = plan(Feed::WhatsApp, 50, 10.0, START_MS, &mut rng);
        let email = plan(Feed::Email, 100, 10.0, START_MS, &mut rng);
        let last = |plan: &Plan| plan.plays.iter().map(|p| p.timestamp_ms).max().unwrap();
        let before = last(&whatsapp);
        stretch(&mut whatsapp, START_MS, 2.0);
        assert!((last(&whatsapp) - START_MS - 2 * (before - START_MS)).abs() <= 1);
        let (wa, mail) = (whatsapp.plays.clone(), email.plays.clone());
        let merged = interleave(vec![whatsapp.plays, email.plays]);
        assert_eq!(merged.len(), wa.len() + mail.len());
        let only = |feed: Feed| -> Vec<Play> {
            merged.iter().filter(|p| p.feed == feed).cloned().collect()
        };
        assert_eq!(only(Feed::WhatsApp), wa);
        assert_eq!(only(Feed::Email), mail);
        // Spread evenly: the first half of the run holds about half of each.
        let half = &merged[..merged.len() / 2];
        let wa_half = half.iter().filter(|p| p.feed == Feed::WhatsApp).count();
        assert!(
            wa_half.abs_diff(wa.len() / 2) <= 1,
            "{wa_half} of {}",
            wa.len()
        );
    }

    #[test]
    fn due_statuses_make_batched_whatsapp_calls_and_one_call_per_ses_event() {
        let play = |feed, message| Play {
            feed,
            message,
            status: "sent",
            timestamp_ms: START_MS,
            redelivery: false,
        };
        let due: Vec<Play> = (0..120)
            .map(|message| {
                let feed = if message % 4 == 0 {
                    Feed::Email
                } else {
                    Feed::WhatsApp
                };
                play(feed, message)
            })
            .collect();
        let calls = calls(&due);
        let sizes: Vec<(Feed, usize)> = calls
            .iter()
            .map(|call| (call[0].feed, call.len()))
            .collect();
        let mut expected = vec![(Feed::WhatsApp, 50), (Feed::WhatsApp, 40)];
        expected.extend([(Feed::Email, 1); 30]);
        assert_eq!(sizes, expected);
        let whatsapp: Vec<usize> = calls
            .iter()
            .flatten()
            .filter(|play| play.feed == Feed::WhatsApp)
            .map(|play| play.message)
            .collect();
        assert!(whatsapp.is_sorted(), "whatsapp statuses keep their order");
    }

    #[test]
    fn whatsapp_payload_is_meta_shaped() {
        let ids = vec!["wamid.a".to_owned()];
        let plays = [Play {
            feed: Feed::WhatsApp,
            message: 0,
            status: "failed",
            timestamp_ms: 1_700_000_000_999,
            redelivery: false,
        }];
        let body: Value = serde_json::from_slice(&whatsapp_payload(&plays, &ids).unwrap()).unwrap();
        let status = &body["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(status["id"], "wamid.a");
        assert_eq!(status["timestamp"], "1700000000");
        assert_eq!(status["errors"][0]["code"], 131026);
    }

    fn email_track() -> Track {
        Track {
            feed: Feed::Email,
            campaign: "c1".to_owned(),
            ids: vec![provider_message_id(Feed::Email, "t", "c1", 0)],
            sent_ms: vec![START_MS],
        }
    }

    fn email_play(status: &'static str, timestamp_ms: i64) -> Play {
        Play {
            feed: Feed::Email,
            message: 0,
            status,
            timestamp_ms,
            redelivery: false,
        }
    }

    /// Every event simulate plays is one the hub maps, at the event's time
    /// (the send time for `Send`, which has none of its own).
    #[test]
    fn ses_events_map_as_the_hub_reads_them() {
        let track = email_track();
        let at = START_MS + 1_234;
        #[rustfmt::skip]
        let cases = [
            ("Send", Status::Sent, START_MS),
            ("Delivery", Status::Delivered, at),
            ("Open", Status::Read, at),
            ("Click", Status::Clicked, at),
            ("Bounce", Status::Failed, at),
            ("Complaint", Status::Complained, at),
        ];
        for (name, status, expected_ms) in cases {
            let timestamp = if name == "Send" { START_MS } else { at };
            let event = ses_event(&email_play(name, timestamp), &track).unwrap();
            assert_eq!(event["eventType"], name);
            assert_eq!(event["mail"]["timestamp"], "2023-11-14T22:13:20.000Z");
            let update = parse_ses_message(&event.to_string(), "sns-1").unwrap();
            assert_eq!(update.provider_message_id, track.ids[0]);
            assert_eq!(update.status, Some(status), "{name}");
            assert_eq!(update.timestamp_ms, expected_ms, "{name}");
            assert_eq!(update.failure.is_some(), name == "Bounce", "{name}");
        }
        assert!(ses_event(&email_play("read", at), &track).is_err());
    }

    #[test]
    fn ids_are_ses_shaped_stable_and_distinct() {
        let id = provider_message_id(Feed::Email, "t", "c", 7);
        assert_eq!(id, provider_message_id(Feed::Email, "t", "c", 7));
        assert_ne!(id, provider_message_id(Feed::Email, "t", "c", 8));
        assert_ne!(id, provider_message_id(Feed::Email, "t", "d", 7));
        assert_eq!(id.len(), 16 + 1 + 36 + 7, "{id}");
        assert!(id.starts_with("010001") && id.ends_with("-000000"), "{id}");
        let sns = sns_message_id("t", "c", 7, "Open");
        assert_eq!(sns, sns_message_id("t", "c", 7, "Open"));
        assert_ne!(sns, sns_message_id("t", "c", 7, "Delivery"));
        assert!(uuid::Uuid::parse_str(&sns).is_ok());
        assert_eq!(
            provider_message_id(Feed::WhatsApp, "t", "c", 7),
            "wamid.c.000007"
        );
    }

    /// The key and certificate are made once and reused; the notifications
    /// they sign verify with the hub's own verifier reading the cert dir,
    /// and any change to a signed field makes them fail.
    #[tokio::test]
    async fn signed_notifications_verify_with_the_hubs_verifier() {
        sns_verify::validate_cert_url(SNS_CERT_URL).unwrap();
        assert!(SNS_CERT_URL.ends_with(&format!("/{SNS_CERT_NAME}")));

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sns-certs");
        let (signer, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Created);
        let key_path = dir.join(SNS_KEY_NAME);
        let cert_path = dir.join(SNS_CERT_NAME);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let cert = std::fs::read(&cert_path).unwrap();
        let names: HashSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            HashSet::from([SNS_CERT_NAME.to_owned(), SNS_KEY_NAME.to_owned()])
        );

        let track = email_track();
        let message =
            serde_json::to_string(&ses_event(&email_play("Open", START_MS + 5), &track).unwrap())
                .unwrap();
        let body = signer
            .notification(SNS_TOPIC_ARN, "m-1", message, format_ms(START_MS + 155))
            .unwrap();
        let envelope = SnsEnvelope::parse(&body).unwrap();
        assert_eq!(envelope.signature_version, "2");
        assert_eq!(envelope.timestamp, "2023-11-14T22:13:20.155Z");
        assert_eq!(envelope.subject.as_deref(), Some(SES_SUBJECT));
        let verifier = SnsVerifier::new(Some(dir.clone()));
        verifier.verify(&envelope).await.unwrap();
        let update = parse_ses_message(&envelope.message, &envelope.message_id).unwrap();
        assert_eq!(update.status, Some(Status::Read));
        assert_eq!(update.idempotency_key, "sns:m-1");

        let tampered: [fn(&mut SnsEnvelope); 4] = [
            |e| e.message.push(' '),
            |e| e.message_id.push('x'),
            |e| e.timestamp = "2023-11-14T22:13:21.155Z".to_owned(),
            |e| e.subject = None,
        ];
        for tamper in tampered {
            let mut changed = envelope.clone();
            tamper(&mut changed);
            assert!(matches!(
                verifier.verify(&changed).await,
                Err(SnsError::SignatureMismatch)
            ));
        }

        // A second run reuses both files.
        let (again, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Reused);
        assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
        let body = again
            .notification(SNS_TOPIC_ARN, "m-2", "{}".to_owned(), format_ms(START_MS))
            .unwrap();
        verifier
            .verify(&SnsEnvelope::parse(&body).unwrap())
            .await
            .unwrap();

        // A certificate that does not match the key is replaced.
        std::fs::write(&cert_path, "not a certificate").unwrap();
        let (replaced, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Replaced);
        let body = replaced
            .notification(SNS_TOPIC_ARN, "m-3", "{}".to_owned(), format_ms(START_MS))
            .unwrap();
        SnsVerifier::new(Some(dir.clone()))
            .verify(&SnsEnvelope::parse(&body).unwrap())
            .await
            .unwrap();

        // An unreadable key is an error, never silently replaced.
        std::fs::write(&key_path, "garbage").unwrap();
        let error = SnsSigner::load_or_create(&dir).err().unwrap().to_string();
        assert!(error.contains("cannot read the sns signing key"), "{error}");
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
