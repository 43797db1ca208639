//! A model-based test of the whole hub. Random histories of WhatsApp
//! statuses and SES events (out of order, redelivered, for messages that are
//! registered late or never), interleaved with registrations, are posted over
//! real HTTP, signed as Meta and SNS sign, to one running hub; then
//! everything the API says (each message's status, seen set, first
//! timestamps, failure and timeline; each campaign's counters and version;
//! the webhook and registration receipts; the live stream's last counters)
//! is compared with a small reference model of the spec, written here from
//! SPEC.md without statushub's `domain` module.
//!
//! A redelivery is the same notification again: the same WhatsApp
//! (id, status, timestamp), or the same signed SNS envelope (same
//! `MessageId`). The same status with another timestamp comes only as
//! another notification: WhatsApp `played` beside `read`, or another SES
//! event (a second open, a second bounce).
//!
//! Every case gets a fresh tenant and two fresh campaigns on the same hub,
//! which keeps running across cases as a production hub would. Half the
//! cases post one call at a time, so the model also predicts every receipt
//! and the exact version; the others post four at a time, racing
//! registrations against webhooks, and then only the final state, the sums
//! of the receipts and the version's bookkeeping are compared.
//!
//! `STATUSHUB_MODEL_CASES=N` runs N cases instead of the default
//! [`DEFAULT_CASES`]; a failure prints the smallest history found.
//!
//! The parts: the reference model (`reference.rs`), the histories proptest
//! generates (`generators.rs`), their dressing for the wire (`wire.rs`), and
//! the runner that posts a case and compares the hub with the model
//! (`runner.rs`).

mod generators;
mod reference;
mod runner;
mod wire;

use proptest::test_runner::{Config, TestError, TestRunner};

use crate::helpers::*;
use generators::history;
use runner::{Coverage, run_case};
use wire::dress;

/// Cases run by default: small, so the suite stays quick in debug builds.
const DEFAULT_CASES: u32 = 24;
/// The environment variable that asks for more cases.
const CASES_VAR: &str = "STATUSHUB_MODEL_CASES";

#[test]
fn the_hub_agrees_with_a_reference_model_of_the_spec() {
    let cases = std::env::var(CASES_VAR).map_or(DEFAULT_CASES, |value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_VAR} must be a number"))
    });
    let system = actix_web::rt::System::new();
    let signer = SnsSigner::new();
    let cert_dir = signer.cert_dir();
    let app = system.block_on(spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(cert_dir);
    }));
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&history(), |history| {
        let case = dress(&history, &signer);
        coverage.borrow_mut().add(&history, &case);
        system.block_on(run_case(&app, &history, &case))
    });
    match result {
        Ok(()) => {
            let coverage = coverage.into_inner();
            eprintln!("{coverage:#?}");
            coverage.assert_broad();
        }
        Err(TestError::Fail(reason, history)) => {
            panic!("{reason}\nsmallest failing history: {history:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
}
