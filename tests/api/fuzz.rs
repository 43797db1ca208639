//! Fuzzing over HTTP: correctly signed, mutated provider payloads (the
//! mutations of `tests/fuzz.rs`, from the same seeds) never get a 5xx other
//! than 503, never hang, and leave the hub healthy. WhatsApp bodies are
//! signed with the app secret; SES events are carried in SNS notifications
//! signed the AWS way (RSA, SignatureVersion 1 and 2) by the crate's one SNS
//! signer (`helpers::SnsSigner`), whose certificate is in the hub's
//! `SNS_CERT_DIR`.
//!
//! Each test sends [`DEFAULT_CASES`] bodies (`FUZZ_HTTP_CASES` sets another
//! count). The cases come from a random seed that a failure prints;
//! `PROPTEST_RNG_SEED=<n>` replays it.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Value, json};
use statushub::webhooks::whatsapp::signature;

use crate::helpers::*;

#[path = "../support/mutate.rs"]
mod mutate;

use mutate::Body;

/// Bodies each test sends unless `FUZZ_HTTP_CASES` says otherwise.
const DEFAULT_CASES: usize = 300;
/// Requests in flight at once.
const IN_FLIGHT: usize = 4;
/// Longest a request may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bodies are cut to this, under the hub's 1 MiB webhook limit: past it the
/// hub answers 413 and closes the connection without reading the body, which
/// the client may see as a reset rather than an answer.
const MAX_BODY: usize = 900 * 1024;
/// The SNS topic the hub accepts.
const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-events";
const TENANT: &str = "t-fuzz";
const CAMPAIGN: &str = "c-fuzz";

fn cases() -> usize {
    std::env::var("FUZZ_HTTP_CASES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Draws `count` values of `strategy`, from `PROPTEST_RNG_SEED` or a random
/// seed; returns them with the seed.
fn draw<S: Strategy>(strategy: S, count: usize) -> (Vec<S::Value>, u64) {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let values = (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    (values, seed)
}

/// What the hub answered to each body, by status code.
#[derive(Default)]
struct Tally {
    by_status: std::collections::BTreeMap<u16, usize>,
    /// Bodies answered with a 5xx other than 503, or not answered in time.
    failures: Vec<String>,
}

impl Tally {
    fn count(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Asserts that nothing failed; on failure shows a few of the bodies and
    /// the seed that replays them.
    fn assert_clean(&self, what: &str, seed: u64) {
        println!("{what}: answers by status {:?}", self.by_status);
        assert!(
            self.failures.is_empty(),
            "{} {what} bodies got a 5xx other than 503 or no answer (replay with \
             PROPTEST_RNG_SEED={seed}); the first ones:\n{}",
            self.failures.len(),
            self.failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A client of its own for the fuzz requests: it lets go of an idle
/// connection well before the hub's 5 s keep-alive closes it, so a connection
/// the hub dropped is a finding, never a stale one reused (as `app.client`'s
/// would be after the seconds spent drawing and signing the cases).
fn fuzz_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Sends every request (a few at a time), each within [`REQUEST_TIMEOUT`],
/// and tallies the answers; `body` describes a request in a failure.
async fn send_all(requests: Vec<(reqwest::RequestBuilder, Body)>) -> Tally {
    let answers: Vec<(Result<u16, String>, Body)> = futures_util::stream::iter(requests)
        .map(|(request, body)| async move {
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            })
            .await
            {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(error)) => Err(format!("request failed: {error:?}")),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            (answer, body)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (answer, body) in answers {
        match answer {
            Ok(status) => {
                *tally.by_status.entry(status).or_default() += 1;
                if status >= 500 && status != 503 {
                    tally.failures.push(format!("{status} for {body:?}"));
                }
            }
            Err(problem) => tally.failures.push(format!("{problem} for {body:?}")),
        }
    }
    tally
}

/// Checks the hub still answers, on a fresh connection.
async fn assert_healthy(app: &TestApp) {
    let response = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Mostly mutated seeds, and some bytes that owe nothing to them.
fn bodies(seeds: &[Value]) -> impl Strategy<Value = Body> + use<> {
    prop_oneof![
        5 => mutate::mutated(seeds),
        1 => mutate::raw(),
    ]
    .prop_map(|mut body| {
        body.0.truncate(MAX_BODY);
        body
    })
}

/// Returns the string values of `key` anywhere in `value`.
fn strings_at(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| strings_at(item, key, out)),
        Value::Object(entries) => {
            for (name, value) in entries {
                match value {
                    Value::String(text) if name == key => out.push(text.clone()),
                    other => strings_at(other, key, out),
                }
            }
        }
        _ => {}
    }
}

/// Registers the message ids of `seeds` (found under `key`) on `channel`, so
/// that mutated statuses about them are applied, not only buffered.
async fn register_seed_ids(app: &TestApp, seeds: &[Value], key: &str, channel: &str) {
    let mut ids = Vec::new();
    seeds
        .iter()
        .for_each(|seed| strings_at(seed, key, &mut ids));
    ids.sort();
    ids.dedup();
    let messages: Vec<Value> = ids
        .iter()
        .map(|id| json!({"tenant_id": TENANT, "campaign_id": CAMPAIGN, "channel": channel, "provider_message_id": id}))
        .collect();
    app.register(&Value::Array(messages)).await;
}

#[actix_web::test]
async fn fuzz_signed_whatsapp_payloads_never_get_a_5xx_but_503() {
    let started = Instant::now();
    let app = spawn_app().await;
    let seeds = mutate::whatsapp_seeds();
    register_seed_ids(&app, &seeds, "id", "whatsapp").await;
    let (bodies, seed) = draw(bodies(&seeds), cases());
    let client = fuzz_client();

    let requests = bodies
        .into_iter()
        .map(|body| {
            let request = client
                .post(app.url("/webhooks/whatsapp"))
                .header("content-type", "application/json")
                .header(
                    "x-hub-signature-256",
                    signature::sign(WHATSAPP_SECRET.as_bytes(), &body.0),
                )
                .body(body.0.clone());
            (request, body)
        })
        .collect();
    let tally = send_all(requests).await;

    tally.assert_clean("whatsapp", seed);
    // A signed body is acknowledged, dead-lettered when uninterpretable (or
    // refused with a 503 to be retried): so the signing works, and every
    // case reached the parser and the hub behind it.
    assert_eq!(
        tally.count(200) + tally.count(503),
        cases(),
        "{:?}",
        tally.by_status
    );
    assert!(app.count_rows("status_events").await > 0, "none applied");
    assert!(
        app.count_rows("dead_letters").await > 0,
        "none dead-lettered"
    );
    assert_healthy(&app).await;
    println!("whatsapp fuzz over http took {:?}", started.elapsed());
}

/// How a mutated SES event is wrapped: what the envelope's free fields hold,
/// the signature version, and whether the message is changed after signing.
#[derive(Debug, Clone)]
struct Wrapping {
    message_id: String,
    subject: Option<String>,
    timestamp: String,
    version: &'static str,
    tampered: bool,
}

impl Wrapping {
    /// Whether the hub must refuse it (401): changed after signing, or a
    /// line break in a one-line field, which AWS never sends and which
    /// could shift the signed string.
    fn refused(&self) -> bool {
        let breaks = |text: &str| text.contains(['\n', '\r']);
        self.tampered
            || breaks(&self.message_id)
            || breaks(&self.timestamp)
            || self.subject.as_deref().is_some_and(breaks)
    }
}

fn wrapping() -> impl Strategy<Value = Wrapping> {
    let message_id = prop_oneof![
        4 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        1 => mutate::text(),
    ];
    let subject = prop_oneof![
        2 => Just(None),
        2 => Just(Some("Amazon SES Email Event Notification".to_owned())),
        1 => mutate::text().prop_map(Some),
    ];
    let timestamp = prop_oneof![
        4 => Just("2024-05-01T12:00:00.123Z".to_owned()),
        1 => mutate::text(),
    ];
    let version = prop_oneof![Just("1"), Just("2")];
    let tampered = proptest::bool::weighted(0.05);
    (message_id, subject, timestamp, version, tampered).prop_map(
        |(message_id, subject, timestamp, version, tampered)| Wrapping {
            message_id,
            subject,
            timestamp,
            version,
            tampered,
        },
    )
}

/// A signed SNS notification of [`TOPIC`] carrying `message`. Only ever a
/// `Notification` naming the test certificate, so the hub neither fetches a
/// certificate nor confirms a subscription.
fn notification(signer: &SnsSigner, message: &Body, wrapping: &Wrapping) -> Body {
    let mut envelope = json!({
        "Type": "Notification",
        "MessageId": wrapping.message_id,
        "TopicArn": TOPIC,
        "Message": message.lossy(),
        "Timestamp": wrapping.timestamp,
        "SignatureVersion": wrapping.version,
        "UnsubscribeURL": format!("https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:fuzz"),
    });
    if let Some(subject) = &wrapping.subject {
        envelope["Subject"] = subject.as_str().into();
    }
    let mut envelope = signer.sign(envelope, wrapping.version);
    if wrapping.tampered {
        envelope["Message"] = format!("{} ", message.lossy()).into();
    }
    Body(envelope.to_string().into_bytes())
}

#[actix_web::test]
async fn fuzz_signed_sns_notifications_of_ses_events_never_get_a_5xx_but_503() {
    let started = Instant::now();
    let signer = SnsSigner::new();
    let cert_dir = signer.cert_dir();
    let app = spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(cert_dir);
        settings.sns_topic_arns = vec![TOPIC.to_owned()];
        // Never used (only notifications are sent); a closed local port in
        // case one ever were.
        settings.sns_subscribe_override = Some("http://127.0.0.1:9/".parse().unwrap());
    })
    .await;
    let seeds = mutate::ses_seeds();
    register_seed_ids(&app, &seeds, "messageId", "email").await;
    // The message is cut so that the envelope, escapes and all, stays under
    // the body limit.
    let messages = (bodies(&seeds), wrapping()).prop_map(|(mut message, wrapping)| {
        message.0.truncate(MAX_BODY / 6);
        (message, wrapping)
    });
    let (messages, seed) = draw(messages, cases());
    let client = fuzz_client();

    let requests = messages
        .iter()
        .map(|(message, wrapping)| {
            let body = notification(&signer, message, wrapping);
            let request = client
                .post(app.url("/webhooks/email"))
                .header("content-type", "text/plain; charset=UTF-8")
                .header("x-amz-sns-message-type", "Notification")
                .body(body.0.clone());
            (request, body)
        })
        .collect();
    let tally = send_all(requests).await;

    tally.assert_clean("sns", seed);
    let refused = messages
        .iter()
        .filter(|(_, wrapping)| wrapping.refused())
        .count();
    // Only the tampered ones (and line breaks in one-line fields) fail
    // verification; the others are acknowledged like signed WhatsApp bodies.
    assert_eq!(tally.count(401), refused, "{:?}", tally.by_status);
    assert_eq!(
        tally.count(200) + tally.count(503),
        cases() - refused,
        "{:?}",
        tally.by_status
    );
    assert!(app.count_rows("status_events").await > 0, "none applied");
    assert!(
        app.count_rows("dead_letters").await > 0,
        "none dead-lettered"
    );
    assert_healthy(&app).await;
    println!("sns fuzz over http took {:?}", started.elapsed());
}

#[actix_web::test]
async fn fuzz_registrations_never_get_a_5xx_but_503() {
    let app = spawn_app().await;
    let strategy = prop_oneof![
        mutate::mutated(&mutate::registration_seeds()),
        mutate::registration_ndjson(),
        mutate::raw(),
    ];
    let (bodies, seed) = draw(strategy, cases());
    let client = fuzz_client();

    let requests = bodies
        .into_iter()
        .map(|body| {
            let request = client
                .post(app.url("/api/v1/messages"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body.0.clone());
            (request, body)
        })
        .collect();
    let tally = send_all(requests).await;

    tally.assert_clean("registration", seed);
    assert!(
        tally.count(200) > 0 && tally.count(400) > 0,
        "{:?}",
        tally.by_status
    );
    assert_healthy(&app).await;
}
