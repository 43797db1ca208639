//! What simulate posts: provider message ids, Meta-shaped WhatsApp status
//! webhooks and SES event-publishing events, shaped like the providers'
//! documented examples.

use anyhow::bail;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::plan::Track;
use super::plan::{Feed, Play};
use super::sns_signer::{SignatureVersion, SnsSigner};
use crate::clock::format_ms;

/// The `Subject` SES gives its event notifications.
const SES_SUBJECT: &str = "Amazon SES Email Event Notification";
/// The AWS account of the simulated SES identity and SNS topic.
const AWS_ACCOUNT: &str = "123456789012";
/// The SMTP server that reports simulated deliveries and bounces.
const REPORTING_MTA: &str = "a8-30.smtp-out.amazonses.com";
/// The mail client that opens and clicks simulated emails.
const MAIL_USER_AGENT: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

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
pub(super) fn provider_message_id(
    feed: Feed,
    tenant: &str,
    campaign: &str,
    index: usize,
) -> String {
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
pub(super) fn sns_message_id(tenant: &str, campaign: &str, index: usize, status: &str) -> String {
    uuid_of(&derive(&[
        "sns",
        tenant,
        campaign,
        &index.to_string(),
        status,
    ]))
    .to_string()
}

/// Returns a Meta-shaped webhook body carrying `plays`.
pub(super) fn whatsapp_payload(plays: &[Play], ids: &[String]) -> anyhow::Result<Vec<u8>> {
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
pub(super) fn ses_event(play: &Play, track: &Track) -> anyhow::Result<Value> {
    let sent_ms = track
        .sent_ms
        .get(play.message)
        .copied()
        .unwrap_or(play.timestamp_ms);
    let recipient = Feed::Email.recipient(play.message);
    let feedback_id = format!(
        "{}-000000",
        sns_message_id("feedback", &track.campaign, play.message, play.status)
    );
    ses_event_json(&SesEmail {
        event_type: play.status,
        message_id: &track.ids[play.message],
        recipient: &recipient,
        from: "Statushub Demo <demo@example.com>",
        campaign: &track.campaign,
        sender: "statushub-simulate",
        sent_ms,
        at_ms: play.timestamp_ms,
        feedback_id: &feedback_id,
    })
}

/// One email's SES event, what [`ses_event_json`] needs to write it.
#[derive(Clone, Copy, Debug)]
pub struct SesEmail<'a> {
    /// `Send`, `Delivery`, `Open`, `Click`, `Bounce` or `Complaint`.
    pub event_type: &'a str,
    /// The SES message id (`mail.messageId`).
    pub message_id: &'a str,
    pub recipient: &'a str,
    /// The `From` address.
    pub from: &'a str,
    /// The campaign, as a message tag and a link tag.
    pub campaign: &'a str,
    /// Who sends (the configuration set and caller identity tags).
    pub sender: &'a str,
    /// When the email was sent, Unix ms.
    pub sent_ms: i64,
    /// When the event happened, Unix ms.
    pub at_ms: i64,
    /// The feedback id of a bounce or complaint.
    pub feedback_id: &'a str,
}

/// Returns the SES event-publishing JSON (the SNS `Message`) of `email`,
/// shaped like AWS's documented examples: what `statushub simulate` and the
/// load generator send.
pub fn ses_event_json(email: &SesEmail<'_>) -> anyhow::Result<Value> {
    let (key, object) = ses_event_object(email)?;
    let mut event = json!({
        "eventType": email.event_type,
        "mail": ses_mail(email),
    });
    event[key] = object;
    Ok(event)
}

/// Returns the key and the object of the event (`delivery`, `open`, …).
fn ses_event_object(email: &SesEmail<'_>) -> anyhow::Result<(&'static str, Value)> {
    let recipient = email.recipient;
    let at = format_ms(email.at_ms);
    let feedback_id = email.feedback_id;
    Ok(match email.event_type {
        "Send" => ("send", json!({})),
        "Delivery" => (
            "delivery",
            json!({
                "timestamp": at,
                "processingTimeMillis": (email.at_ms - email.sent_ms).max(0),
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
                "linkTags": {"campaign": [email.campaign]},
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
    })
}

/// Returns the event's `mail` object.
fn ses_mail(email: &SesEmail<'_>) -> Value {
    let id = email.message_id;
    let recipient = email.recipient;
    let from = email.from;
    let subject = format!("Your {} update", email.campaign);
    json!({
        "timestamp": format_ms(email.sent_ms),
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
            "ses:configuration-set": [email.sender],
            "ses:source-ip": ["192.0.2.0"],
            "ses:from-domain": ["example.com"],
            "ses:caller-identity": [email.sender],
            "campaign": [email.campaign],
        },
    })
}

/// Returns the body of an SNS `Notification` carrying the SES event
/// `message`, as SNS posts it, signed by `signer` with SignatureVersion 2.
pub(super) fn sns_notification(
    signer: &SnsSigner,
    topic_arn: &str,
    message_id: &str,
    message: String,
    timestamp: String,
) -> anyhow::Result<Vec<u8>> {
    let mut envelope = json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic_arn,
        "Subject": SES_SUBJECT,
        "Message": message,
        "Timestamp": timestamp,
        "UnsubscribeURL": format!(
            "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:statushub-simulate"
        ),
    });
    signer.sign(&mut envelope, SignatureVersion::V2)?;
    Ok(serde_json::to_vec(&envelope)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;
    use crate::simulate::SNS_TOPIC_ARN;
    use crate::simulate::cert_dir::{SNS_CERT_NAME, SNS_CERT_URL};
    use crate::simulate::sns_signer::test_signer;
    use crate::webhooks::ses::{SnsEnvelope, SnsError, SnsVerifier, parse_ses_message};

    const START_MS: i64 = 1_700_000_000_000;

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

    /// The notifications simulate posts carry SES's subject and verify with
    /// the hub's own verifier reading the cert dir; any change to a signed
    /// field makes them fail.
    #[tokio::test]
    async fn signed_ses_notifications_verify_with_the_hubs_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let signer = test_signer().with_cert_url(SNS_CERT_URL);
        std::fs::write(
            dir.path().join(SNS_CERT_NAME),
            signer.certificate_pem().unwrap(),
        )
        .unwrap();
        let track = email_track();
        let message =
            serde_json::to_string(&ses_event(&email_play("Open", START_MS + 5), &track).unwrap())
                .unwrap();
        let body = sns_notification(
            &signer,
            SNS_TOPIC_ARN,
            "m-1",
            message,
            format_ms(START_MS + 155),
        )
        .unwrap();
        let envelope = SnsEnvelope::parse(&body).unwrap();
        assert_eq!(envelope.signature_version, "2");
        assert_eq!(envelope.signing_cert_url, SNS_CERT_URL);
        assert_eq!(envelope.timestamp, "2023-11-14T22:13:20.155Z");
        assert_eq!(envelope.subject.as_deref(), Some(SES_SUBJECT));
        let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
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
    }
}
