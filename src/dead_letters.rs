//! `statushub replay-dead-letters`: asks a running hub to replay its open
//! dead letters, over HTTP with the admin token.
//!
//! It talks to the hub rather than to the database on purpose: a replay
//! must go through the hub's usual apply path, where each campaign actor
//! is the single writer of its campaign's counters; rows written behind
//! the actors' back would leave their in-memory counters stale. So the
//! command pages through `GET /webhooks/dead-letters?state=open` and calls
//! `POST /webhooks/dead-letters/{id}/replay` for each letter that matches
//! `--since` and `--reason`, one at a time.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::clock::{format_ms, now_ms};

/// Letters asked for per page (the hub's most).
const PAGE: u32 = 200;
/// Attempts per replay while the hub answers 503 (its write queue is full).
const MAX_ATTEMPTS: u32 = 5;
/// Longest pause honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Arguments of `statushub replay-dead-letters`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Only letters received since then: an RFC 3339 time
    /// (`2026-11-30T12:00:00Z`) or a duration back from now (`90s`, `30m`,
    /// `24h`, `7d`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only letters whose reason contains this text (case-sensitive), e.g.
    /// `timestamp` or `unknown sns message type`.
    #[arg(long)]
    pub reason: Option<String>,
    /// Base URL of the running hub.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: Url,
    /// Where the hub keeps its generated secrets (read for the admin token).
    #[arg(long, env = "STATUSHUB_DATA_DIR", default_value = ".statushub")]
    pub data_dir: std::path::PathBuf,
    /// The hub's admin token (default: from the data directory).
    #[arg(long, env = "STATUSHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<secrecy::SecretString>,
}

/// The `--since` bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// An absolute time, Unix milliseconds.
    At(i64),
    /// A duration back from when the command runs.
    Ago(Duration),
}

impl Since {
    /// Returns the bound in Unix milliseconds, `now_ms` being now.
    fn at_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(ago) => {
                now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

/// Parses `--since`: RFC 3339, else a duration.
fn parse_since(text: &str) -> Result<Since, String> {
    let text = text.trim();
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        let ms = at.unix_timestamp_nanos() / 1_000_000;
        return i64::try_from(ms)
            .map(Since::At)
            .map_err(|_| format!("time out of range: {text:?}"));
    }
    crate::auth::parse_ttl(text)
        .map(Since::Ago)
        .map_err(|_| format!("expected an RFC 3339 time or a duration such as 24h, got {text:?}"))
}

/// A dead letter as the listing shows it (the fields used here).
#[derive(Debug, Deserialize)]
struct Listed {
    id: i64,
    channel: String,
    reason: String,
    received_at: String,
}

/// The part of a replay's answer reported here.
#[derive(Debug, Deserialize)]
struct Replayed {
    state: String,
    replay: Option<ReplayRecord>,
}

#[derive(Debug, Deserialize)]
struct ReplayRecord {
    outcome: String,
    error: Option<String>,
    received: i64,
    applied: i64,
    duplicates: i64,
    unmatched: i64,
}

/// What the run did, by outcome.
#[derive(Debug, Default)]
struct Tally {
    applied: u64,
    partial: u64,
    failed: u64,
    refused: u64,
    gone: u64,
}

/// Runs the command; fails when the hub cannot be reached or refuses the
/// token, not when letters stay uninterpretable (that is reported).
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let token = crate::secrets::admin_token(&args.data_dir, &args.admin_token)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("statushub-replay/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the http client")?;
    let since_ms = args.since.map(|since| since.at_ms(now_ms()));
    let since_text = since_ms.map(format_ms);
    let mut tally = Tally::default();
    let mut before: Option<i64> = None;
    loop {
        let page = list_open(&client, &args.url, &token, before).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        let full = page.len() >= PAGE as usize;
        for letter in page {
            // RFC 3339 with fixed-width milliseconds sorts in time order.
            let recent = since_text
                .as_deref()
                .is_none_or(|since| letter.received_at.as_str() >= since);
            let matches = args
                .reason
                .as_deref()
                .is_none_or(|reason| letter.reason.contains(reason));
            if recent && matches {
                replay_one(&client, &args.url, &token, &letter, &mut tally).await?;
            }
        }
        if !full {
            break;
        }
    }
    println!(
        "replayed {} dead letters: {} applied, {} partial, {} failed, {} refused (not verified at receipt), {} gone",
        tally.applied + tally.partial + tally.failed,
        tally.applied,
        tally.partial,
        tally.failed,
        tally.refused,
        tally.gone
    );
    Ok(())
}

/// Returns a page of open letters below `before`, newest first.
async fn list_open(
    client: &reqwest::Client,
    base: &Url,
    token: &str,
    before: Option<i64>,
) -> anyhow::Result<Vec<Listed>> {
    let mut url = endpoint(base, &["webhooks", "dead-letters"])?;
    url.query_pairs_mut()
        .append_pair("state", "open")
        .append_pair("limit", &PAGE.to_string());
    if let Some(before) = before {
        url.query_pairs_mut()
            .append_pair("before", &before.to_string());
    }
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("failed to reach the hub at {base}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "listing dead letters failed: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    response
        .json()
        .await
        .context("the hub's dead-letter listing is not what this version expects")
}

/// Replays one letter, retrying while the hub is busy, and reports it.
async fn replay_one(
    client: &reqwest::Client,
    base: &Url,
    token: &str,
    letter: &Listed,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let url = endpoint(
        base,
        &["webhooks", "dead-letters", &letter.id.to_string(), "replay"],
    )?;
    let head = format!(
        "dead letter {} ({}, received {})",
        letter.id, letter.channel, letter.received_at
    );
    for attempt in 1..=MAX_ATTEMPTS {
        let response = client
            .post(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("failed to reach the hub at {base}"))?;
        match response.status() {
            StatusCode::OK => {
                let replayed: Replayed = response
                    .json()
                    .await
                    .context("the hub's replay answer is not what this version expects")?;
                let record = replayed
                    .replay
                    .ok_or_else(|| anyhow!("{head}: the hub recorded no replay"))?;
                match record.outcome.as_str() {
                    "applied" => tally.applied += 1,
                    "partial" => tally.partial += 1,
                    _ => tally.failed += 1,
                }
                let error = record
                    .error
                    .map(|error| format!(": {error}"))
                    .unwrap_or_default();
                println!(
                    "{head}: {} ({} statuses: {} applied, {} duplicates, {} unmatched), now {}{error}",
                    record.outcome,
                    record.received,
                    record.applied,
                    record.duplicates,
                    record.unmatched,
                    replayed.state
                );
                return Ok(());
            }
            StatusCode::CONFLICT => {
                tally.refused += 1;
                println!(
                    "{head}: refused: {}",
                    response.text().await.unwrap_or_default()
                );
                return Ok(());
            }
            StatusCode::NOT_FOUND => {
                tally.gone += 1;
                println!("{head}: gone (removed by retention meanwhile)");
                return Ok(());
            }
            StatusCode::SERVICE_UNAVAILABLE if attempt < MAX_ATTEMPTS => {
                let pause = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(MAX_RETRY_AFTER);
                tokio::time::sleep(pause).await;
            }
            status => bail!(
                "{head}: replay failed: {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    bail!("{head}: the hub stayed unavailable")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc_3339_or_a_duration() {
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z"),
            Ok(Since::At(1_700_000_000_500))
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00"),
            Ok(Since::At(1_700_000_000_000))
        );
        assert_eq!(
            parse_since("24h"),
            Ok(Since::Ago(Duration::from_secs(86_400)))
        );
        assert_eq!(Since::Ago(Duration::from_secs(2)).at_ms(10_000), 8_000);
        for wrong in ["yesterday", "2023-11-14", "5w", ""] {
            assert!(parse_since(wrong).is_err(), "{wrong}");
        }
    }
}
