//! Fuzzing every parser of untrusted input on stable Rust, with proptest:
//! the WhatsApp webhook payload (and its signature header), the SNS envelope
//! (parse, message type, string to sign, certificate and subscribe URL
//! checks), the SES event inside it, and registration JSON/NDJSON.
//!
//! Each parser gets random bytes and JSON, and mutations of realistic seeds:
//! the provider captures in `../shared/vectors/{whatsapp,ses,sns}` (read in
//! place; the tests fail when they are absent) and seeds built in
//! `support/mutate.rs`, with keys deleted, repeated, renamed and added,
//! values retyped (string, number, null, array, object), huge, negative and
//! float numbers, long, unicode and control-character strings, nesting
//! (bounded) past serde_json's limit, then truncation, byte flips and
//! inserted tokens. The property: no panic, and `Ok` or a clean `Err` that
//! keeps each parser's own promises (ids within bounds, the idempotency key
//! formed from them, a registration error being a 400).
//!
//! `PROPTEST_CASES` sets the cases per test (default [`DEFAULT_CASES`]: about
//! 10 s for the whole file in a debug build on 2 cores). Millions, in release
//! (a million per test took about 4 minutes on 2 cores):
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release --test fuzz
//! PROPTEST_CASES=1000000 cargo test --release --test fuzz -- ses   # one parser
//! ```
//!
//! A failure is shrunk, and its seed saved in `tests/fuzz.proptest-regressions`
//! (commit it with the fix: it is replayed first on every run);
//! `PROPTEST_RNG_SEED=<n>` fixes the random seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mutate.rs"]
mod mutate;

use mutate::{
    byte_op, captures, mutated, raw, registration_ndjson, registration_seeds, ses_seeds, sns_seeds,
    whatsapp_seeds,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseResult};
use statushub::domain::Channel;
use statushub::error::ApiError;
use statushub::webhooks::ses::{SnsEnvelope, parse_ses_message, sns_verify};
use statushub::webhooks::whatsapp::{self, signature};

/// The app secret and body whose signature headers are fuzzed.
const SECRET: &[u8] = b"test-app-secret";
const SIGNED_BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[]}"#;

/// Cases per test when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 3000;

/// proptest's configuration (which reads the `PROPTEST_*` variables), with
/// [`DEFAULT_CASES`] unless `PROPTEST_CASES` says otherwise.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// The WhatsApp parser keeps its promises: an update has a message id of 1
/// to 256 bytes, a status value of 1 to 64 bytes, a timestamp not before
/// 1970, and the idempotency key made of them.
fn check_whatsapp(body: &[u8]) -> TestCaseResult {
    match whatsapp::parse(body) {
        Ok(parsed) => {
            for update in &parsed.updates {
                prop_assert_eq!(update.channel, Channel::Whatsapp);
                let id = &update.provider_message_id;
                prop_assert!(!id.is_empty() && id.len() <= 256, "id {:?}", id);
                prop_assert!(!update.event.is_empty() && update.event.len() <= 64);
                prop_assert!(update.timestamp_ms >= 0);
                prop_assert_eq!(
                    &update.idempotency_key,
                    &format!("wa:{}:{}", id, update.event)
                );
            }
            prop_assert!(parsed.problems.iter().all(|problem| !problem.is_empty()));
        }
        Err(problem) => prop_assert!(!problem.is_empty()),
    }
    Ok(())
}

/// The signature check accepts exactly `sha256=` and the body's HMAC in hex
/// (either case, surrounded by ASCII white space), and never panics.
fn check_signature_header(header: &[u8]) -> TestCaseResult {
    let genuine = signature::sign(SECRET, SIGNED_BODY);
    let genuine_hex = genuine.strip_prefix("sha256=").unwrap().as_bytes();
    let matches = header
        .strip_prefix(b"sha256=")
        .is_some_and(|hex| hex.trim_ascii().eq_ignore_ascii_case(genuine_hex));
    let outcome = signature::verify(SECRET, SIGNED_BODY, Some(header));
    prop_assert_eq!(outcome.is_ok(), matches, "{:?}", outcome);
    Ok(())
}

/// Returns the string AWS signs for the envelope, written here from AWS's
/// documentation ("Verifying the signatures of Amazon SNS messages"), or
/// `None` when there is none (unknown type, a confirmation without its URL or
/// token) or when a one-line field holds a line break, which AWS never sends
/// and which could shift the signed string (the hub refuses such envelopes).
fn aws_string_to_sign(envelope: &SnsEnvelope) -> Option<String> {
    let one_line = [
        Some(&envelope.message_id),
        envelope.subject.as_ref(),
        Some(&envelope.timestamp),
        Some(&envelope.topic_arn),
        Some(&envelope.r#type),
        envelope.token.as_ref(),
        envelope.subscribe_url.as_ref(),
        Some(&envelope.signing_cert_url),
    ];
    if one_line
        .into_iter()
        .flatten()
        .any(|field| field.contains(['\n', '\r']))
    {
        return None;
    }
    let keys: Vec<(&str, Option<&String>)> = match envelope.r#type.as_str() {
        "Notification" => vec![
            ("Message", Some(&envelope.message)),
            ("MessageId", Some(&envelope.message_id)),
            ("Subject", envelope.subject.as_ref()),
            ("Timestamp", Some(&envelope.timestamp)),
            ("TopicArn", Some(&envelope.topic_arn)),
            ("Type", Some(&envelope.r#type)),
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
            envelope.subscribe_url.as_ref()?;
            envelope.token.as_ref()?;
            vec![
                ("Message", Some(&envelope.message)),
                ("MessageId", Some(&envelope.message_id)),
                ("SubscribeURL", envelope.subscribe_url.as_ref()),
                ("Timestamp", Some(&envelope.timestamp)),
                ("Token", envelope.token.as_ref()),
                ("TopicArn", Some(&envelope.topic_arn)),
                ("Type", Some(&envelope.r#type)),
            ]
        }
        _ => return None,
    };
    Some(
        keys.into_iter()
            .filter_map(|(key, value)| Some(format!("{key}\n{}\n", value?)))
            .collect(),
    )
}

/// The SNS envelope: a known type is its `Type`; the string to sign is
/// AWS's, and exists only when AWS's does; the URL checks answer without
/// panicking.
fn check_sns(body: &[u8]) -> TestCaseResult {
    let Ok(envelope) = SnsEnvelope::parse(body) else {
        return Ok(());
    };
    match envelope.message_type() {
        Ok(message_type) => prop_assert_eq!(message_type.as_str(), envelope.r#type.as_str()),
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    prop_assert_eq!(
        envelope.string_to_sign().ok(),
        aws_string_to_sign(&envelope)
    );
    let _ = sns_verify::validate_cert_url(&envelope.signing_cert_url);
    if let Some(url) = &envelope.subscribe_url {
        let _ = sns_verify::validate_subscribe_url(url);
    }
    Ok(())
}

/// The SES event: an update is an email one, about a non-empty message id,
/// keyed by the SNS message id.
fn check_ses(message: &str, sns_message_id: &str) -> TestCaseResult {
    match parse_ses_message(message, sns_message_id) {
        Ok(update) => {
            prop_assert_eq!(update.channel, Channel::Email);
            prop_assert!(!update.provider_message_id.is_empty());
            prop_assert!(!update.event.is_empty());
            prop_assert_eq!(&update.idempotency_key, &format!("sns:{sns_message_id}"));
        }
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}

/// Registration: a refusal is always a 400, and no body yields more
/// registrations than it has objects and arrays (serde also reads a
/// registration from an array of its fields in order).
fn check_registrations(body: &[u8]) -> TestCaseResult {
    match statushub::api::parse_registrations(body) {
        Ok(count) => {
            let opened = body
                .iter()
                .filter(|&&byte| matches!(byte, b'{' | b'['))
                .count();
            prop_assert!(
                count <= opened,
                "{} registrations from {} objects and arrays",
                count,
                opened
            );
        }
        Err(error) => prop_assert!(
            matches!(error, ApiError::BadRequest(_)),
            "not a 400: {:?}",
            error
        ),
    }
    Ok(())
}

/// The seeds are what they claim, so mutations start deep in each parser:
/// every WhatsApp seed yields updates, every SES seed but the set-up notice
/// an update, every SNS seed a string to sign, every registration seed
/// registrations.
#[test]
fn seeds_parse_cleanly() {
    for seed in whatsapp_seeds() {
        let parsed = whatsapp::parse(seed.to_string().as_bytes()).unwrap();
        assert!(
            !parsed.updates.is_empty() && parsed.problems.is_empty(),
            "{seed}"
        );
    }
    for seed in ses_seeds() {
        let outcome = parse_ses_message(&seed.to_string(), "m");
        let notice = seed["notificationType"] == "AmazonSnsSubscriptionSucceeded";
        assert_eq!(outcome.is_ok(), !notice, "{seed}");
    }
    assert_eq!(
        captures("ses").len(),
        15,
        "one seed per documented SES example"
    );
    for seed in sns_seeds() {
        let envelope = SnsEnvelope::parse(seed.to_string().as_bytes()).unwrap();
        envelope.string_to_sign().unwrap();
    }
    for seed in registration_seeds() {
        assert!(statushub::api::parse_registrations(seed.to_string().as_bytes()).unwrap() > 0);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn whatsapp_raw(body in raw()) {
        check_whatsapp(&body.0)?;
    }

    #[test]
    fn whatsapp_mutated(body in mutated(&whatsapp_seeds())) {
        check_whatsapp(&body.0)?;
    }

    #[test]
    fn whatsapp_signature_header(header in prop_oneof![
        raw().prop_map(|body| body.0),
        "sha256=[0-9a-fA-F ]{0,70}".prop_map(String::into_bytes),
        (vec(byte_op(), 0..3), any::<bool>()).prop_map(|(ops, upper)| {
            let mut header = signature::sign(SECRET, SIGNED_BODY).into_bytes();
            if upper {
                header[7..].make_ascii_uppercase();
            }
            for op in ops {
                op.apply(&mut header);
            }
            header
        }),
    ]) {
        check_signature_header(&header)?;
    }

    #[test]
    fn sns_envelope_raw(body in raw()) {
        check_sns(&body.0)?;
    }

    #[test]
    fn sns_envelope_mutated(body in mutated(&sns_seeds())) {
        check_sns(&body.0)?;
    }

    #[test]
    fn ses_event_raw(body in raw(), id in mutate::text()) {
        check_ses(&body.lossy(), &id)?;
    }

    #[test]
    fn ses_event_mutated(body in mutated(&ses_seeds()), id in mutate::text()) {
        check_ses(&body.lossy(), &id)?;
    }

    #[test]
    fn registration_raw(body in raw()) {
        check_registrations(&body.0)?;
    }

    #[test]
    fn registration_mutated(body in prop_oneof![
        mutated(&registration_seeds()),
        registration_ndjson(),
    ]) {
        check_registrations(&body.0)?;
    }
}
