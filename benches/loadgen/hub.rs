//! The hub's API as the generator uses it, as the admin: registration in
//! parallel chunks, campaign counters, readiness.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::options::Channel;
use super::payload::message_id;
use super::plan::Counters;

/// Most attempts of one registration chunk the hub asks to retry.
const REGISTER_ATTEMPTS: usize = 30;
/// Longest pause a `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Counter reads in flight at once.
const READING: usize = 16;

/// The first instance of the hub, as the admin.
#[derive(Clone, Debug)]
pub struct Hub {
    pub client: reqwest::Client,
    pub url: String,
    pub admin_token: String,
    pub tenant: String,
}

/// One row of `POST /api/v1/messages`.
#[derive(Serialize)]
struct Row<'a> {
    tenant_id: &'a str,
    campaign_id: &'a str,
    channel: &'static str,
    provider_message_id: String,
}

/// A registration's receipt (the parts the generator reads).
#[derive(Debug, Default, Deserialize)]
struct RegisterReceipt {
    #[serde(default)]
    registered: usize,
    #[serde(default)]
    existing: usize,
}

/// What registering did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Registration {
    pub messages: usize,
    pub campaigns: usize,
    /// New messages, by the hub's receipts.
    pub registered: usize,
    /// Messages the hub already had (a reused `--run-id`).
    pub existing: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub chunk: usize,
    pub parallel: usize,
}

/// A campaign's counters and version, as `GET …/metrics` reports them.
#[derive(Debug, Deserialize)]
pub struct Metrics {
    #[serde(flatten)]
    pub counters: Counters,
    pub version: i64,
}

impl Hub {
    /// Registers `messages` messages in each of `campaigns` (campaign by
    /// campaign, `chunk` rows a request, `parallel` requests in flight).
    pub async fn register(
        &self,
        channel: Channel,
        run: &str,
        campaigns: &[String],
        messages: usize,
        chunk: usize,
        parallel: usize,
    ) -> anyhow::Result<Registration> {
        let total = campaigns.len() * messages;
        let started = Instant::now();
        let receipts: Vec<anyhow::Result<RegisterReceipt>> =
            futures_util::stream::iter((0..total).step_by(chunk).map(|first| {
                let rows: Vec<Row<'_>> = (first..(first + chunk).min(total))
                    .map(|k| Row {
                        tenant_id: &self.tenant,
                        campaign_id: &campaigns[k / messages],
                        channel: channel.registered_as(),
                        provider_message_id: message_id(
                            channel,
                            run,
                            (k / messages) as u32,
                            (k % messages) as u32,
                        ),
                    })
                    .collect();
                self.register_chunk(rows)
            }))
            .buffer_unordered(parallel)
            .collect()
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let mut registration = Registration {
            messages: total,
            campaigns: campaigns.len(),
            seconds,
            messages_per_second: total as f64 / seconds.max(1e-9),
            chunk,
            parallel,
            ..Registration::default()
        };
        for receipt in receipts {
            let receipt = receipt?;
            registration.registered += receipt.registered;
            registration.existing += receipt.existing;
        }
        Ok(registration)
    }

    /// Posts one chunk, again while the hub answers 503 or 429.
    async fn register_chunk(&self, rows: Vec<Row<'_>>) -> anyhow::Result<RegisterReceipt> {
        let body = serde_json::to_vec(&rows)?;
        for _ in 0..REGISTER_ATTEMPTS {
            let response = self
                .client
                .post(format!("{}/api/v1/messages", self.url))
                .bearer_auth(&self.admin_token)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .with_context(|| format!("cannot reach the hub at {}", self.url))?;
            let status = response.status();
            if status == 200 {
                return response
                    .json()
                    .await
                    .context("unreadable registration receipt");
            }
            if status != 503 && status != 429 {
                let text = response.text().await.unwrap_or_default();
                bail!("registration answered {status}: {}", text.trim());
            }
            tokio::time::sleep(retry_after(&response)).await;
        }
        bail!("registration answered 503 {REGISTER_ATTEMPTS} times")
    }

    /// The counters of campaign `campaign`.
    pub async fn metrics(&self, campaign: &str) -> anyhow::Result<Metrics> {
        let response = self
            .client
            .get(format!("{}/api/v1/campaigns/{campaign}/metrics", self.url))
            .query(&[("tenant_id", self.tenant.as_str())])
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .context("cannot read the campaign's counters")?;
        let status = response.status();
        if status != 200 {
            bail!("GET …/{campaign}/metrics answered {status}");
        }
        response.json().await.context("unreadable counters")
    }

    /// The counters of every campaign, in order.
    pub async fn all_metrics(&self, campaigns: &[String]) -> anyhow::Result<Vec<Metrics>> {
        futures_util::stream::iter(campaigns.iter().map(|campaign| self.metrics(campaign)))
            .buffered(READING)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Waits until `GET /readyz` answers 200 (polling every 5 ms), at most
    /// `within`.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self
                .client
                .get(format!("{}/readyz", self.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status() == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{}/readyz did not answer 200 within {within:?}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long the hub asked to wait (`Retry-After` in seconds, one when
/// absent), at most [`MAX_RETRY_AFTER`].
pub fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}
