//! Talking to the hub: the HTTP client, message registration, the signed
//! webhook calls (retried while the hub asks to wait), and the campaign
//! metrics read at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use super::args::SimulateArgs;
use super::payloads::{ses_event, sns_message_id, sns_notification, whatsapp_payload};
use super::plan::Track;
use super::plan::{Feed, Play};
use super::sns_signer::SnsSigner;
use crate::clock::format_ms;
use crate::webhooks::whatsapp::signature;

/// Messages registered per `POST /api/v1/messages`.
const REGISTER_CHUNK: usize = 1_000;
/// Attempts per webhook call when the hub answers 503 or 429.
const MAX_ATTEMPTS: u32 = 6;
/// Longest pause honoured from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long after an SES event SNS publishes it.
const SNS_DELAY_MS: i64 = 150;

/// Returns the HTTP client simulate talks to the hub with.
pub(super) fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("statushub-simulate/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("failed to build the http client")
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

/// Registers a campaign's messages as the admin.
pub(super) async fn register(
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
pub(super) async fn fetch_metrics(
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
pub(super) struct Sender {
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

/// One webhook call, ready to post.
struct Call<'a> {
    url: &'a Url,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Sender {
    /// Returns a sender to the hub at `args.url`, signing WhatsApp calls
    /// with `whatsapp_secret` and SNS notifications with `sns`.
    pub(super) fn new(
        client: reqwest::Client,
        args: &SimulateArgs,
        whatsapp_secret: Option<String>,
        sns: Option<Arc<SnsSigner>>,
    ) -> anyhow::Result<Self> {
        Ok(Sender {
            client,
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
        })
    }

    /// Posts `plays` of `track` in one call (one play for email) and
    /// returns the hub's receipt, retrying while the hub asks to (503/429).
    pub(super) async fn send(&self, track: &Track, plays: &[Play]) -> anyhow::Result<Value> {
        let call = match track.feed {
            Feed::WhatsApp => self.whatsapp_call(track, plays)?,
            Feed::Email => self.email_call(track, plays).await?,
        };
        self.post(track.feed, &call).await
    }

    /// Returns a Meta-shaped status webhook carrying `plays`, signed with
    /// the app secret.
    fn whatsapp_call(&self, track: &Track, plays: &[Play]) -> anyhow::Result<Call<'_>> {
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
        Ok(Call {
            url: &self.whatsapp_url,
            body,
            headers,
        })
    }

    /// Returns the signed SNS notification carrying the SES event of the
    /// one play in `plays`, with SNS's headers.
    async fn email_call(&self, track: &Track, plays: &[Play]) -> anyhow::Result<Call<'_>> {
        let [play] = plays else {
            bail!("an sns notification carries one ses event");
        };
        let signer = Arc::clone(self.sns.as_ref().context("no sns signing key")?);
        let message_id = sns_message_id(&self.tenant, &track.campaign, play.message, play.status);
        let message = serde_json::to_string(&ses_event(play, track)?)?;
        let timestamp = format_ms(play.timestamp_ms + SNS_DELAY_MS);
        // RSA signing is CPU work: off the runtime thread, so the
        // calls in flight sign in parallel.
        let (topic_arn, id) = (self.topic_arn.clone(), message_id.clone());
        let body = tokio::task::spawn_blocking(move || {
            sns_notification(&signer, &topic_arn, &id, message, timestamp)
        })
        .await
        .context("the sns signing task failed")??;
        let headers = vec![
            ("content-type", "text/plain; charset=UTF-8".to_owned()),
            ("x-amz-sns-message-type", "Notification".to_owned()),
            ("x-amz-sns-message-id", message_id),
            ("x-amz-sns-topic-arn", self.topic_arn.clone()),
        ];
        Ok(Call {
            url: &self.email_url,
            body,
            headers,
        })
    }

    /// Posts `call` and returns the hub's receipt, retrying while the hub
    /// answers 503 or 429 (honouring a short `Retry-After`).
    async fn post(&self, feed: Feed, call: &Call<'_>) -> anyhow::Result<Value> {
        let mut attempt = 1;
        loop {
            let mut request = self.client.post(call.url.clone()).body(call.body.clone());
            for (name, value) in &call.headers {
                request = request.header(*name, value);
            }
            if let (Feed::Email, Some(secret)) = (feed, &self.ses_secret) {
                request = request.basic_auth("sns", Some(secret));
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("failed to reach the hub's {} webhook", feed.channel()))?;
            let status = response.status();
            if status.is_success() {
                return response.json().await.context("unreadable webhook receipt");
            }
            let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::TOO_MANY_REQUESTS;
            if !retryable || attempt >= MAX_ATTEMPTS {
                let text = response.text().await.unwrap_or_default();
                return Err(self.refusal(feed, status, text.trim()));
            }
            let pause = retry_after(&response);
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

/// Returns how long the hub asked to wait (`Retry-After` in seconds; one
/// second when absent), at most [`MAX_RETRY_AFTER`].
fn retry_after(response: &reqwest::Response) -> Duration {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
        .min(MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

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
