//! Confirms SNS subscriptions by visiting their `SubscribeURL`, holds those
//! nobody allowed for the admin to confirm, and keeps the recent outcomes
//! for `/webhooks/health`.
//!
//! A subscription is confirmed by itself only when its topic is listed in
//! `SNS_TOPIC_ARNS`. With the list empty, any AWS account could subscribe
//! the hub to its own topic and then publish genuine, AWS-signed SES events
//! (forged bounces and complaints), so the confirmation is held instead:
//! listed in `/webhooks/health` and on the debug page until the admin
//! confirms it (`POST /webhooks/sns/confirmations/{id}`). Held confirmations
//! live in memory, at most [`KEPT_PENDING`], one per topic: after a restart
//! the admin asks SNS to send the confirmation again.

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
/// Held confirmations kept (one per topic; the oldest goes first).
const KEPT_PENDING: usize = 50;

/// A signed `SubscriptionConfirmation` waiting for the admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PendingConfirmation {
    /// What the admin confirms it by.
    pub id: u64,
    /// The topic that asks to deliver to this hub.
    pub topic_arn: String,
    /// When statushub received it (RFC 3339).
    pub received_at: String,
    /// The host-validated URL that confirms it (SNS's tokens in it expire
    /// after a few days).
    pub subscribe_url: String,
}

/// What happened to one subscription or unsubscription message, as shown by
/// `/webhooks/health` (newest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// The last outcomes, newest first, for `/webhooks/health`.
    recent: Mutex<VecDeque<SubscriptionOutcome>>,
    /// Confirmations held for the admin, oldest first.
    pending: Mutex<Pending>,
}

/// Held confirmations and the next id to give.
#[derive(Debug, Default)]
struct Pending {
    /// The id the next held confirmation gets.
    next_id: u64,
    /// Held confirmations, oldest first, one per topic.
    held: VecDeque<PendingConfirmation>,
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
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Holds a signed confirmation for a topic nobody allowed, for the admin
    /// to confirm; a newer one for the same topic replaces the older.
    pub fn hold(&self, envelope: &SnsEnvelope, subscribe_url: &str) -> PendingConfirmation {
        let topic_arn = SnsError::quote(&envelope.topic_arn);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.next_id += 1;
        let held = PendingConfirmation {
            id: pending.next_id,
            topic_arn: topic_arn.clone(),
            received_at: now(),
            subscribe_url: subscribe_url.to_owned(),
        };
        pending.held.retain(|each| each.topic_arn != topic_arn);
        if pending.held.len() >= KEPT_PENDING {
            pending.held.pop_front();
        }
        pending.held.push_back(held.clone());
        tracing::warn!(
            topic_arn = %topic_arn,
            id = held.id,
            "SNS SUBSCRIPTION NOT CONFIRMED: SNS_TOPIC_ARNS is empty, so no topic is confirmed \
             automatically; if this topic is yours, confirm it on the debug page or with \
             POST /webhooks/sns/confirmations/{{id}}, or list it in SNS_TOPIC_ARNS"
        );
        held
    }

    /// Returns the held confirmations, newest first.
    pub fn pending(&self) -> Vec<PendingConfirmation> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.held.iter().rev().cloned().collect()
    }

    /// Confirms the held confirmation `id` for the admin: `None` when there
    /// is no such held confirmation. It stays held when confirming failed,
    /// so the admin may try again.
    pub async fn confirm_held(&self, id: u64) -> Option<SubscriptionOutcome> {
        let held = {
            let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.held.iter().find(|each| each.id == id).cloned()
        }?;
        tracing::warn!(topic_arn = %held.topic_arn, id, "admin confirms an sns subscription");
        let outcome = self
            .confirm_topic(&held.topic_arn, &held.subscribe_url)
            .await;
        if outcome.error.is_none() {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.held.retain(|each| each.id != id);
        }
        Some(outcome)
    }

    /// Confirms the subscription by a `GET` of `subscribe_url` (which the
    /// caller has validated as an SNS URL), records and returns the outcome.
    pub async fn confirm(
        &self,
        envelope: &SnsEnvelope,
        subscribe_url: &str,
    ) -> SubscriptionOutcome {
        self.confirm_topic(&SnsError::quote(&envelope.topic_arn), subscribe_url)
            .await
    }

    async fn confirm_topic(&self, topic_arn: &str, subscribe_url: &str) -> SubscriptionOutcome {
        let result = self.fetch(subscribe_url).await;
        let topic_arn = topic_arn.to_owned();
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
    fn held_confirmations_are_one_per_topic_and_bounded() {
        let subscriptions = SnsSubscriptions::new(None);
        let envelope = SnsEnvelope::parse(
            br#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"z"}"#,
        )
        .unwrap();
        let url = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=1";
        for i in 0..KEPT_PENDING + 10 {
            let mut envelope = envelope.clone();
            envelope.topic_arn = format!("t{i}");
            subscriptions.hold(&envelope, url);
        }
        let again = subscriptions.hold(&envelope_for("t20", &envelope), url);
        let pending = subscriptions.pending();
        assert_eq!(pending.len(), KEPT_PENDING);
        assert_eq!(pending[0], again, "newest first");
        assert_eq!(
            pending
                .iter()
                .filter(|each| each.topic_arn == "t20")
                .count(),
            1,
            "a newer confirmation replaces the older one of its topic"
        );
        assert!(
            pending.iter().all(|each| each.topic_arn != "t0"),
            "oldest dropped"
        );
    }

    fn envelope_for(topic: &str, envelope: &SnsEnvelope) -> SnsEnvelope {
        let mut envelope = envelope.clone();
        envelope.topic_arn = topic.to_owned();
        envelope
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
