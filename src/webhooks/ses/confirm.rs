//! Confirms SNS subscriptions by visiting their `SubscribeURL`, and keeps the
//! recent outcomes for `/webhooks/health`.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::sns::{SnsEnvelope, SnsError};

/// Time allowed for the confirmation `GET`.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest confirmation response read (AWS's is well under 1 KiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Outcomes kept for `/webhooks/health`.
const KEPT_OUTCOMES: usize = 20;

/// What happened to one subscription or unsubscription message, as shown by
/// `/webhooks/health` (newest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscriptionOutcome {
    /// When statushub handled the message (RFC 3339).
    pub at: String,
    /// `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    pub message_type: &'static str,
    /// The SNS topic the message is about (cut if absurdly long).
    pub topic_arn: String,
    /// `confirmed`, `failed` or `unsubscribed`.
    pub outcome: &'static str,
    /// The subscription ARN SNS answered with, when it did.
    pub subscription_arn: Option<String>,
    /// Why the confirmation failed.
    pub error: Option<String>,
}

/// Visits `SubscribeURL`s (already host-validated by the caller) and
/// remembers the last outcomes.
#[derive(Debug)]
pub struct SnsSubscriptions {
    /// `None` only if the HTTP client could not be built; confirmations then fail.
    client: Option<reqwest::Client>,
    /// Test-only base the confirmation `GET` goes to instead of the SNS host;
    /// see [`crate::config::Settings::sns_subscribe_override`].
    subscribe_override: Option<Url>,
    recent: Mutex<VecDeque<SubscriptionOutcome>>,
}

impl SnsSubscriptions {
    /// Returns a confirmer that follows `SubscribeURL`s over HTTPS, or to
    /// `subscribe_override` when set (tests only).
    pub fn new(subscribe_override: Option<Url>) -> Self {
        if let Some(base) = &subscribe_override {
            tracing::warn!(
                base = %base,
                "sns subscription confirmations go to a test override instead of sns; never run like this in production"
            );
        }
        let client = reqwest::Client::builder()
            .timeout(CONFIRM_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(subscribe_override.is_none())
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "no http client: sns subscriptions cannot be confirmed");
            })
            .ok();
        SnsSubscriptions {
            client,
            subscribe_override,
            recent: Mutex::new(VecDeque::with_capacity(KEPT_OUTCOMES)),
        }
    }

    /// Confirms the subscription by a `GET` of `subscribe_url` (which the
    /// caller has validated as an SNS URL), records and returns the outcome.
    pub async fn confirm(
        &self,
        envelope: &SnsEnvelope,
        subscribe_url: &str,
    ) -> SubscriptionOutcome {
        let result = self.fetch(subscribe_url).await;
        let topic_arn = SnsError::quote(&envelope.topic_arn);
        let host = Url::parse(subscribe_url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        let outcome = match result {
            Ok(subscription_arn) => {
                tracing::info!(
                    topic_arn = %topic_arn,
                    subscription_arn = subscription_arn.as_deref().unwrap_or("unknown"),
                    host = %host,
                    "sns subscription confirmed"
                );
                SubscriptionOutcome {
                    at: now(),
                    message_type: "SubscriptionConfirmation",
                    topic_arn,
                    outcome: "confirmed",
                    subscription_arn,
                    error: None,
                }
            }
            Err(error) => {
                tracing::warn!(
                    topic_arn = %topic_arn,
                    host = %host,
                    error = %error,
                    "sns subscription confirmation failed"
                );
                SubscriptionOutcome {
                    at: now(),
                    message_type: "SubscriptionConfirmation",
                    topic_arn,
                    outcome: "failed",
                    subscription_arn: None,
                    error: Some(error),
                }
            }
        };
        self.record(outcome.clone());
        outcome
    }

    /// Logs and records that SNS confirmed an unsubscription.
    pub fn unsubscribed(&self, envelope: &SnsEnvelope) {
        let topic_arn = SnsError::quote(&envelope.topic_arn);
        tracing::info!(topic_arn = %topic_arn, "sns subscription removed");
        self.record(SubscriptionOutcome {
            at: now(),
            message_type: "UnsubscribeConfirmation",
            topic_arn,
            outcome: "unsubscribed",
            subscription_arn: None,
            error: None,
        });
    }

    /// Returns the recorded outcomes, newest first.
    pub fn recent(&self) -> Vec<SubscriptionOutcome> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn record(&self, outcome: SubscriptionOutcome) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.truncate(KEPT_OUTCOMES - 1);
        recent.push_front(outcome);
    }

    /// Sends the `GET` and returns the `SubscriptionArn` of the answer, if
    /// it names one; an error text when the request fails or is not 2xx.
    async fn fetch(&self, subscribe_url: &str) -> Result<Option<String>, String> {
        let client = self.client.as_ref().ok_or("no http client")?;
        let mut target =
            Url::parse(subscribe_url).map_err(|error| format!("invalid subscribe url: {error}"))?;
        if let Some(base) = &self.subscribe_override {
            let mut redirected = base.clone();
            redirected.set_path(target.path());
            redirected.set_query(target.query());
            target = redirected;
        }
        let mut response = client
            .get(target)
            .send()
            .await
            .map_err(|error| format!("request failed: {}", error.without_url()))?;
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        if !status.is_success() {
            return Err(format!("sns answered http {}", status.as_u16()));
        }
        Ok(subscription_arn(&String::from_utf8_lossy(&body)))
    }
}

/// Returns the text of `<SubscriptionArn>` in SNS's XML confirmation answer.
fn subscription_arn(xml: &str) -> Option<String> {
    const OPEN: &str = "<SubscriptionArn>";
    let start = xml.find(OPEN)? + OPEN.len();
    let end = start + xml[start..].find("</SubscriptionArn>")?;
    let arn = xml[start..end].trim();
    (!arn.is_empty() && arn.len() <= 512).then(|| arn.to_owned())
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_arn_is_read_from_the_answer() {
        let xml = "<ConfirmSubscriptionResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
            <ConfirmSubscriptionResult><SubscriptionArn>arn:aws:sns:us-west-2:123456789012:MyTopic:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55</SubscriptionArn>\
            </ConfirmSubscriptionResult></ConfirmSubscriptionResponse>";
        assert_eq!(
            subscription_arn(xml).as_deref(),
            Some("arn:aws:sns:us-west-2:123456789012:MyTopic:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55")
        );
        assert_eq!(
            subscription_arn("<SubscriptionArn></SubscriptionArn>"),
            None
        );
        assert_eq!(subscription_arn("<SubscriptionArn>x"), None);
        assert_eq!(subscription_arn(""), None);
    }

    #[test]
    fn only_the_last_outcomes_are_kept_newest_first() {
        let subscriptions = SnsSubscriptions::new(None);
        let envelope = SnsEnvelope::parse(
            br#"{"Type":"UnsubscribeConfirmation","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"z"}"#,
        )
        .unwrap();
        for i in 0..KEPT_OUTCOMES + 5 {
            let mut envelope = envelope.clone();
            envelope.topic_arn = format!("t{i}");
            subscriptions.unsubscribed(&envelope);
        }
        let recent = subscriptions.recent();
        assert_eq!(recent.len(), KEPT_OUTCOMES);
        assert_eq!(recent[0].topic_arn, format!("t{}", KEPT_OUTCOMES + 4));
        assert_eq!(recent[0].outcome, "unsubscribed");
    }
}
