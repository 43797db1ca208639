//! What the generator posts, signed as the providers sign it.
//!
//! - WhatsApp: Meta's status webhook (the hub's own
//!   [`statushub::webhooks::whatsapp::envelope`] around status objects
//!   shaped like Meta's: conversation and pricing on sent and delivered,
//!   `errors[]` on failed), signed with the app secret
//!   ([`statushub::webhooks::whatsapp::signature::sign`]).
//! - SES: one SES event-publishing event (`Send`, `Delivery`, `Open`,
//!   `Click`, `Complaint`, `Bounce`, shaped after AWS's documented
//!   examples) in one SNS `Notification`, signed SignatureVersion 2 by
//!   [`statushub::simulate::sns_signer::SnsSigner`] under a key made for
//!   the run. Its self-signed certificate goes into the hub's
//!   `SNS_CERT_DIR` as `SimpleNotificationService-statushub-loadgen-<run>.pem`
//!   (removed when the run ends), and every notification names
//!   `https://sns.us-east-1.amazonaws.com/<that name>` as `SigningCertURL`:
//!   the hub reads its cert dir when it first meets that URL, so a running
//!   hub trusts the run's key without a restart, and a new name per run
//!   never meets a key the hub cached for another run.
//!
//! Ids encode what they are about, so an SSE event names its notification
//! without a lookup table: `wamid.<run>.<campaign>.<index>` for WhatsApp,
//! `0100<campaign:08x><index:08x>-<run>-000000` (SES-like) for email; the
//! SNS `MessageId` is a UUID made of the run, campaign, index and stage, so
//! a redelivery (the same body again) keeps it and the hub counts it as a
//! duplicate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use statushub::clock::format_ms;
use statushub::simulate::sns_signer::{SignatureVersion, SnsSigner};
use statushub::simulate::{SesEmail, ses_event_json};
use statushub::webhooks::whatsapp::{envelope, signature};

use super::options::Channel;
use super::plan::{Notification, Plan, Stage};

/// The `Subject` SES gives its event notifications.
const SES_SUBJECT: &str = "Amazon SES Email Event Notification";
/// The sender.
const FROM: &str = "Statushub Load <load@example.com>";
/// Milliseconds between an event and SNS's notification of it.
const SNS_DELAY_MS: i64 = 150;

/// Provider message id of message `index` of campaign `campaign`.
pub fn message_id(channel: Channel, run: &str, campaign: u32, index: u32) -> String {
    match channel {
        Channel::Whatsapp => format!("wamid.{run}.{campaign}.{index}"),
        Channel::Ses => format!("0100{campaign:08x}{index:08x}-{run}-000000"),
    }
}

/// `(campaign, index)` of a provider message id [`message_id`] made for
/// run `run`; `None` for any other id.
pub fn parse_message_id(channel: Channel, run: &str, id: &str) -> Option<(u32, u32)> {
    match channel {
        Channel::Whatsapp => {
            let rest = id.strip_prefix("wamid.")?.strip_prefix(run)?;
            let (campaign, index) = rest.strip_prefix('.')?.split_once('.')?;
            Some((campaign.parse().ok()?, index.parse().ok()?))
        }
        Channel::Ses => {
            let rest = id.strip_prefix("0100")?;
            let (hex, tail) = rest.split_at_checked(16)?;
            if tail != format!("-{run}-000000") {
                return None;
            }
            let campaign = u32::from_str_radix(&hex[..8], 16).ok()?;
            let index = u32::from_str_radix(&hex[8..], 16).ok()?;
            Some((campaign, index))
        }
    }
}

/// The SNS `MessageId` of a notification: a version 4 UUID made of the run,
/// the message and the stage.
pub fn sns_message_id(run: &str, notification: &Notification) -> String {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&Sha256::digest(run.as_bytes())[..4]);
    bytes[4..8].copy_from_slice(&notification.campaign.to_be_bytes());
    bytes[8..12].copy_from_slice(&notification.index.to_be_bytes());
    bytes[12] = notification.stage.index() as u8;
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The recipient of message `index`.
fn recipient(channel: Channel, index: u32) -> String {
    match channel {
        Channel::Whatsapp => format!("1555{:07}", index % 10_000_000),
        Channel::Ses => format!("recipient-{index}@example.com"),
    }
}

/// A WhatsApp webhook up to its statuses, as [`envelope`] writes it.
const WHATSAPP_HEAD: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"statuses":["#;
/// What closes [`WHATSAPP_HEAD`].
const WHATSAPP_TAIL: &str = "]}}]}]}";

/// What every request of a run shares.
#[derive(Debug)]
pub struct Payloads {
    pub run: String,
    /// Campaign ids, by number.
    pub campaigns: Vec<String>,
    /// When the messages were sent, Unix milliseconds: each event is
    /// stamped this plus its stage's offset.
    pub sent_ms: i64,
    /// The Meta app secret (WhatsApp runs).
    pub whatsapp_secret: Option<String>,
    /// The run's SNS key (SES runs).
    pub ses: Option<SesKey>,
    pub topic_arn: String,
}

impl Payloads {
    /// The provider's timestamp of `stage`, Unix milliseconds.
    fn at_ms(&self, stage: Stage) -> i64 {
        self.sent_ms + stage.offset_seconds() * 1_000
    }

    /// A WhatsApp webhook carrying `numbers` of `plan`, and its
    /// `X-Hub-Signature-256`.
    pub fn whatsapp(&self, plan: &Plan, numbers: &[u32]) -> anyhow::Result<(Vec<u8>, String)> {
        let secret = self
            .whatsapp_secret
            .as_deref()
            .context("no whatsapp app secret")?;
        // Written as text, not built as a `serde_json::Value`: that took
        // about a fifth of the generator's CPU (tree maps, one allocation
        // per key), which the hub then lacked on the shared cores. The test
        // `whatsapp_bodies_are_the_json_of_the_envelope` holds it to
        // `envelope` of `whatsapp_status`.
        let mut body = String::with_capacity(WHATSAPP_HEAD.len() + 400 * numbers.len() + 8);
        body.push_str(WHATSAPP_HEAD);
        for (n, &number) in numbers.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            self.write_whatsapp_status(&mut body, &plan.notifications[number as usize]);
        }
        body.push_str(WHATSAPP_TAIL);
        let body = body.into_bytes();
        let header = signature::sign(secret.as_bytes(), &body);
        Ok((body, header))
    }

    /// One Meta status object, as [`Payloads::whatsapp_status`] makes it,
    /// written as JSON text. Every value is ASCII with no character JSON
    /// escapes (ids, digits, fixed words).
    fn write_whatsapp_status(&self, body: &mut String, notification: &Notification) {
        use std::fmt::Write as _;
        let Notification {
            campaign,
            index,
            stage,
        } = *notification;
        let _ = write!(
            body,
            r#"{{"id":"wamid.{run}.{campaign}.{index}","status":"{event}","timestamp":"{seconds}","recipient_id":"1555{recipient:07}""#,
            run = self.run,
            event = stage.event(Channel::Whatsapp),
            seconds = self.at_ms(stage) / 1_000,
            recipient = index % 10_000_000,
        );
        if matches!(stage, Stage::Sent | Stage::Delivered) {
            let _ = write!(
                body,
                r#","conversation":{{"id":"conv-{campaign}-{index}","origin":{{"type":"marketing"}}}},"pricing":{{"billable":true,"pricing_model":"CBP","category":"marketing"}}"#
            );
        }
        if stage == Stage::Failed {
            body.push_str(
                r#","errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{"details":"the recipient is not on whatsapp"}}]"#,
            );
        }
        body.push('}');
    }

    /// One Meta status object.
    #[cfg_attr(not(test), allow(dead_code))]
    fn whatsapp_status(&self, notification: &Notification) -> Value {
        let Notification {
            campaign,
            index,
            stage,
        } = *notification;
        let mut status = json!({
            "id": message_id(Channel::Whatsapp, &self.run, campaign, index),
            "status": stage.event(Channel::Whatsapp),
            "timestamp": (self.at_ms(stage) / 1_000).to_string(),
            "recipient_id": recipient(Channel::Whatsapp, index),
        });
        if matches!(stage, Stage::Sent | Stage::Delivered) {
            status["conversation"] = json!({
                "id": format!("conv-{campaign}-{index}"),
                "origin": {"type": "marketing"},
            });
            status["pricing"] =
                json!({"billable": true, "pricing_model": "CBP", "category": "marketing"});
        }
        if stage == Stage::Failed {
            status["errors"] = json!([{
                "code": 131026,
                "title": "Message undeliverable",
                "message": "Message undeliverable",
                "error_data": {"details": "the recipient is not on whatsapp"},
            }]);
        }
        status
    }

    /// The SES event of a notification (the SNS `Message`), written by the
    /// library's builder, the one `statushub simulate` uses.
    pub fn ses_event(&self, notification: &Notification) -> Value {
        let Notification {
            campaign,
            index,
            stage,
        } = *notification;
        let id = message_id(Channel::Ses, &self.run, campaign, index);
        let to = recipient(Channel::Ses, index);
        let feedback_id = format!("{}-000000", sns_message_id("feedback", notification));
        ses_event_json(&SesEmail {
            event_type: stage.event(Channel::Ses),
            message_id: &id,
            recipient: &to,
            from: FROM,
            campaign: &self.campaigns[campaign as usize],
            sender: "statushub-loadgen",
            sent_ms: self.sent_ms,
            at_ms: self.at_ms(stage),
            feedback_id: &feedback_id,
        })
        .expect("every stage has an SES event")
    }

    /// The signed SNS `Notification` of a notification, as SNS posts it.
    pub fn ses(&self, notification: &Notification) -> anyhow::Result<Vec<u8>> {
        let key = self.ses.as_ref().context("no sns signing key")?;
        let mut envelope = json!({
            "Type": "Notification",
            "MessageId": sns_message_id(&self.run, notification),
            "TopicArn": self.topic_arn,
            "Subject": SES_SUBJECT,
            "Message": self.ses_event(notification).to_string(),
            "Timestamp": format_ms(self.at_ms(notification.stage) + SNS_DELAY_MS),
            "UnsubscribeURL": format!(
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={}:statushub-loadgen",
                self.topic_arn
            ),
        });
        key.signer.sign(&mut envelope, SignatureVersion::V2)?;
        Ok(serde_json::to_vec(&envelope)?)
    }

    /// Signs the SNS notifications of `numbers` (distinct notification
    /// numbers of `plan`) on every core, before the clock starts: RSA
    /// signing costs the generator about 2 ms of CPU each, which must not
    /// compete with the hub during the measurement. Returns the bodies by
    /// notification number (`None` where not asked for).
    pub fn presign(&self, plan: &Plan, numbers: &[u32]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = numbers.len().div_ceil(threads).max(1);
        let signed: Vec<Signed> = std::thread::scope(|scope| {
            let workers: Vec<_> = numbers
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|&number| {
                                Ok((number, self.ses(&plan.notifications[number as usize])?))
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a signing thread panicked"))
                .collect()
        });
        let mut bodies = vec![None; plan.notifications.len()];
        for part in signed {
            for (number, body) in part? {
                bodies[number as usize] = Some(body);
            }
        }
        Ok(bodies)
    }
}

/// A signing thread's notifications: (number, body) each.
type Signed = anyhow::Result<Vec<(u32, Vec<u8>)>>;

/// The run's SNS signing key, whose certificate lies in the hub's cert dir
/// while the key lives.
#[derive(Debug)]
pub struct SesKey {
    pub signer: SnsSigner,
    cert_path: PathBuf,
}

impl SesKey {
    /// Makes an RSA-2048 key for run `run` and writes its self-signed
    /// certificate into `cert_dir` (created if missing).
    pub fn create(cert_dir: &Path, run: &str) -> anyhow::Result<SesKey> {
        let name = format!("SimpleNotificationService-statushub-loadgen-{run}.pem");
        let signer = SnsSigner::generate(format!("https://sns.us-east-1.amazonaws.com/{name}"))?;
        std::fs::create_dir_all(cert_dir)
            .with_context(|| format!("cannot create {}", cert_dir.display()))?;
        let cert_path = cert_dir.join(&name);
        // Written aside and renamed, so the hub never reads half a file.
        let partial = cert_dir.join(format!(".{name}.tmp"));
        std::fs::write(&partial, signer.certificate_pem()?)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, &cert_path)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(SesKey { signer, cert_path })
    }

    /// Where the certificate lies.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

impl Drop for SesKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert_path);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use statushub::domain::Status;
    use statushub::webhooks::ses::{SnsEnvelope, SnsVerifier, parse_ses_message};

    use super::super::options::Order;
    use super::*;

    fn payloads(ses: Option<SesKey>) -> Payloads {
        Payloads {
            run: "r1".to_owned(),
            campaigns: vec!["load-r1-0".to_owned(), "load-r1-1".to_owned()],
            sent_ms: 1_700_000_000_000,
            whatsapp_secret: Some("app-secret".to_owned()),
            ses,
            topic_arn: statushub::simulate::SNS_TOPIC_ARN.to_owned(),
        }
    }

    #[test]
    fn ids_name_their_message_and_only_theirs() {
        for channel in [Channel::Whatsapp, Channel::Ses] {
            let mut seen = HashSet::new();
            for (campaign, index) in [(0, 0), (1, 0), (0, 1), (9_999, 999_999), (u32::MAX, 7)] {
                let id = message_id(channel, "r1", campaign, index);
                assert!(seen.insert(id.clone()), "{id}");
                assert_eq!(
                    parse_message_id(channel, "r1", &id),
                    Some((campaign, index))
                );
                assert_eq!(parse_message_id(channel, "r2", &id), None, "{id}");
            }
            assert_eq!(parse_message_id(channel, "r1", "wamid.other"), None);
        }
        assert_eq!(
            message_id(Channel::Ses, "r1", 1, 2),
            "01000000000100000002-r1-000000"
        );
        let n = |stage| Notification {
            campaign: 1,
            index: 2,
            stage,
        };
        let id = sns_message_id("r1", &n(Stage::Read));
        assert_eq!(id, sns_message_id("r1", &n(Stage::Read)));
        assert_ne!(id, sns_message_id("r1", &n(Stage::Delivered)));
        assert_ne!(id, sns_message_id("r2", &n(Stage::Read)));
        assert!(uuid::Uuid::parse_str(&id).is_ok());
    }

    /// The WhatsApp body, written as text, is the JSON `envelope` makes of
    /// `whatsapp_status`, for every stage.
    #[test]
    fn whatsapp_bodies_are_the_json_of_the_envelope() {
        let plan = Plan::new(Channel::Whatsapp, 3, 30, Order::Shuffled, 7, 5);
        let payloads = payloads(None);
        let every_stage: Vec<u32> = (0..plan.notifications.len() as u32).collect();
        for numbers in every_stage.chunks(7) {
            let (body, _) = payloads.whatsapp(&plan, numbers).unwrap();
            let written: Value = serde_json::from_slice(&body).unwrap();
            let built = envelope(
                numbers
                    .iter()
                    .map(|&number| payloads.whatsapp_status(&plan.notifications[number as usize]))
                    .collect(),
            );
            assert_eq!(written, built);
        }
        let stages: HashSet<Stage> = plan.notifications.iter().map(|n| n.stage).collect();
        assert!(stages.contains(&Stage::Failed) && stages.contains(&Stage::Sent));
    }

    /// The WhatsApp body parses as the hub parses it, carries the plan's
    /// statuses in order, and its signature verifies under the app secret.
    #[test]
    fn whatsapp_webhooks_are_meta_shaped_and_signed() {
        let plan = Plan::new(Channel::Whatsapp, 2, 20, Order::InOrder, 20, 1);
        let payloads = payloads(None);
        let failed = plan
            .notifications
            .iter()
            .position(|n| n.stage == Stage::Failed)
            .unwrap() as u32;
        let numbers = [0, 1, 45, failed];
        let (body, header) = payloads.whatsapp(&plan, &numbers).unwrap();
        signature::verify(b"app-secret", &body, Some(header.as_bytes())).unwrap();
        assert!(signature::verify(b"other", &body, Some(header.as_bytes())).is_err());
        let parsed = statushub::webhooks::whatsapp::parse(&body).unwrap();
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.updates.len(), numbers.len());
        for (update, &number) in parsed.updates.iter().zip(&numbers) {
            let n = plan.notifications[number as usize];
            assert_eq!(
                update.provider_message_id,
                message_id(Channel::Whatsapp, "r1", n.campaign, n.index)
            );
            assert_eq!(update.event, n.stage.event(Channel::Whatsapp));
        }
        let last = parsed.updates.last().unwrap();
        assert_eq!(last.status, Some(Status::Failed));
        assert!(last.failure.is_some());
        // Distinct notifications, distinct idempotency keys.
        let keys: HashSet<&str> = parsed
            .updates
            .iter()
            .map(|update| update.idempotency_key.as_str())
            .collect();
        assert_eq!(keys.len(), numbers.len());
    }

    /// Every SES event maps to its stage's status as the hub reads it, at
    /// the stage's time (the send time for `Send`).
    #[test]
    fn ses_events_map_as_the_hub_reads_them() {
        let payloads = payloads(None);
        for (stage, status) in [
            (Stage::Sent, Status::Sent),
            (Stage::Delivered, Status::Delivered),
            (Stage::Read, Status::Read),
            (Stage::Clicked, Status::Clicked),
            (Stage::Complained, Status::Complained),
            (Stage::Failed, Status::Failed),
        ] {
            let n = Notification {
                campaign: 1,
                index: 3,
                stage,
            };
            let event = payloads.ses_event(&n).to_string();
            let update = parse_ses_message(&event, "m-1").unwrap();
            assert_eq!(update.status, Some(status), "{stage:?}");
            assert_eq!(
                update.provider_message_id,
                message_id(Channel::Ses, "r1", 1, 3)
            );
            assert_eq!(
                update.timestamp_ms,
                payloads.sent_ms + stage.offset_seconds() * 1_000,
                "{stage:?}"
            );
            assert_eq!(update.failure.is_some(), stage == Stage::Failed);
        }
    }

    /// The SNS notifications verify with the hub's own verifier reading the
    /// cert dir the key wrote its certificate to; a changed byte does not;
    /// the certificate goes when the key does.
    #[tokio::test]
    async fn ses_notifications_are_signed_with_a_key_the_cert_dir_vouches_for() {
        let dir = tempfile::tempdir().unwrap();
        let key = SesKey::create(&dir.path().join("certs"), "r1").unwrap();
        let cert = key.cert_path().to_owned();
        assert!(cert.exists());
        let payloads = payloads(Some(key));
        let plan = Plan::new(Channel::Ses, 2, 20, Order::InOrder, 1, 1);
        let verifier = SnsVerifier::new(Some(dir.path().join("certs")));
        let bodies = payloads.presign(&plan, &[0, 5, 77]).unwrap();
        assert_eq!(bodies.iter().filter(|body| body.is_some()).count(), 3);
        for number in [0usize, 5, 77] {
            let body = bodies[number].as_ref().unwrap();
            let envelope = SnsEnvelope::parse(body).unwrap();
            assert_eq!(envelope.signature_version, "2");
            verifier.verify(&envelope).await.unwrap();
            let update = parse_ses_message(&envelope.message, &envelope.message_id).unwrap();
            let n = plan.notifications[number];
            assert_eq!(
                update.provider_message_id,
                message_id(Channel::Ses, "r1", n.campaign, n.index)
            );
            assert_eq!(update.event, n.stage.event(Channel::Ses));
            let mut tampered = envelope.clone();
            tampered.message.push(' ');
            assert!(verifier.verify(&tampered).await.is_err());
        }
        // Signing again gives the same notification id: a redelivery.
        let again = SnsEnvelope::parse(&payloads.ses(&plan.notifications[5]).unwrap()).unwrap();
        let first = SnsEnvelope::parse(bodies[5].as_ref().unwrap()).unwrap();
        assert_eq!(again.message_id, first.message_id);
        drop(payloads);
        assert!(!cert.exists());
    }
}
