//! SES events (the `Message` of an SNS notification) turned into status
//! updates.
//!
//! Accepts both SES event publishing (`eventType`, configuration sets) and
//! identity notifications (`notificationType`); the two share `mail` and the
//! per-event objects (`bounce`, `complaint`, `delivery`). Unknown extra
//! fields are ignored.

use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Channel, Failure, Status, StatusUpdate};

/// Why an SES message could not be turned into a status update; the caller
/// dead-letters it.
#[derive(Debug, thiserror::Error)]
pub enum SesError {
    /// The message is not a JSON object of the SES shape.
    #[error("malformed ses message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Neither `eventType` nor `notificationType` is present.
    #[error("ses message has no eventType or notificationType")]
    MissingEventType,
    /// The event type is not one statushub knows.
    #[error("unknown ses event type {0:?}")]
    UnknownEventType(String),
    /// `mail.messageId` is absent or empty.
    #[error("ses message has no mail.messageId")]
    MissingMessageId,
    /// Neither the event's nor the mail's timestamp is valid RFC 3339.
    #[error("ses message has no valid timestamp")]
    MissingTimestamp,
}

/// The SES event types statushub maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SesEvent {
    Send,
    Delivery,
    Open,
    Click,
    Bounce,
    Complaint,
    Reject,
    RenderingFailure,
    DeliveryDelay,
    Subscription,
}

impl SesEvent {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "Send" => SesEvent::Send,
            "Delivery" => SesEvent::Delivery,
            "Open" => SesEvent::Open,
            "Click" => SesEvent::Click,
            "Bounce" => SesEvent::Bounce,
            "Complaint" => SesEvent::Complaint,
            "Reject" => SesEvent::Reject,
            "Rendering Failure" => SesEvent::RenderingFailure,
            "DeliveryDelay" => SesEvent::DeliveryDelay,
            "Subscription" => SesEvent::Subscription,
            _ => return None,
        })
    }

    /// Returns the key of the object that describes this event.
    fn object_key(self) -> &'static str {
        match self {
            SesEvent::Send => "send",
            SesEvent::Delivery => "delivery",
            SesEvent::Open => "open",
            SesEvent::Click => "click",
            SesEvent::Bounce => "bounce",
            SesEvent::Complaint => "complaint",
            SesEvent::Reject => "reject",
            SesEvent::RenderingFailure => "failure",
            SesEvent::DeliveryDelay => "deliveryDelay",
            SesEvent::Subscription => "subscription",
        }
    }

    /// Returns the status this event means (the SPEC's SES mapping).
    fn status(self) -> Option<Status> {
        match self {
            SesEvent::Send => Some(Status::Sent),
            SesEvent::Delivery => Some(Status::Delivered),
            SesEvent::Open => Some(Status::Read),
            SesEvent::Click => Some(Status::Clicked),
            SesEvent::Complaint => Some(Status::Complained),
            SesEvent::Bounce | SesEvent::Reject | SesEvent::RenderingFailure => {
                Some(Status::Failed)
            }
            SesEvent::DeliveryDelay | SesEvent::Subscription => None,
        }
    }

    /// Returns the failure reason and the timeline details kept from the
    /// event's object.
    fn describe(self, object: &Map<String, Value>) -> (Option<Failure>, Value) {
        let text = |key: &str| {
            object
                .get(key)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
        };
        let keep = |keys: &[&str]| pick(object, keys);
        match self {
            SesEvent::Send | SesEvent::Open => (None, Value::Null),
            SesEvent::Delivery => (None, keep(&["recipients", "smtpResponse"])),
            SesEvent::Click => (None, keep(&["link", "linkTags"])),
            SesEvent::Bounce => {
                let bounce_type = text("bounceType").unwrap_or("Undetermined");
                let sub_type = text("bounceSubType").unwrap_or("Undetermined");
                let diagnostic = object
                    .get("bouncedRecipients")
                    .and_then(|recipients| recipients.get(0)?.get("diagnosticCode")?.as_str())
                    .filter(|code| !code.is_empty());
                let failure = Failure {
                    code: format!("{bounce_type}/{sub_type}"),
                    title: diagnostic.map_or_else(
                        || format!("{bounce_type} bounce ({sub_type})"),
                        str::to_owned,
                    ),
                };
                (
                    Some(failure),
                    keep(&["bounceType", "bounceSubType", "bouncedRecipients"]),
                )
            }
            SesEvent::Complaint => (
                None,
                keep(&[
                    "complaintFeedbackType",
                    "complaintSubType",
                    "complainedRecipients",
                ]),
            ),
            SesEvent::Reject => {
                let failure = Failure {
                    code: "Reject".to_owned(),
                    title: text("reason").unwrap_or("rejected by ses").to_owned(),
                };
                (Some(failure), keep(&["reason"]))
            }
            SesEvent::RenderingFailure => {
                let title = match (text("errorMessage"), text("templateName")) {
                    (Some(message), _) => message.to_owned(),
                    (None, Some(template)) => format!("template {template} failed to render"),
                    (None, None) => "template failed to render".to_owned(),
                };
                let failure = Failure {
                    code: "RenderingFailure".to_owned(),
                    title,
                };
                (Some(failure), keep(&["errorMessage", "templateName"]))
            }
            SesEvent::DeliveryDelay => (
                None,
                keep(&[
                    "delayType",
                    "expirationTime",
                    "delayedRecipients",
                    "reportingMTA",
                ]),
            ),
            SesEvent::Subscription => (
                None,
                keep(&[
                    "contactList",
                    "source",
                    "newTopicPreferences",
                    "oldTopicPreferences",
                ]),
            ),
        }
    }
}

/// The parts of an SES message statushub reads; everything else is ignored
/// or reached through `rest`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SesMessage {
    event_type: Option<String>,
    notification_type: Option<String>,
    mail: Option<Mail>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mail {
    message_id: Option<String>,
    timestamp: Option<String>,
}

/// Parses an SES event (the SNS `Message`) into the status update it means.
///
/// `sns_message_id` is the envelope's `MessageId`, which makes the
/// idempotency key (`sns:<MessageId>`): SNS redelivers with the same id.
/// The timestamp is the event's own (`bounce.timestamp`, …), else
/// `mail.timestamp`.
pub fn parse_ses_message(message: &str, sns_message_id: &str) -> Result<StatusUpdate, SesError> {
    let parsed: SesMessage = serde_json::from_str(message)?;
    let name = parsed
        .event_type
        .or(parsed.notification_type)
        .ok_or(SesError::MissingEventType)?;
    let event = SesEvent::parse(&name)
        .ok_or_else(|| SesError::UnknownEventType(name.chars().take(64).collect()))?;
    let mail = parsed.mail.ok_or(SesError::MissingMessageId)?;
    let provider_message_id = mail
        .message_id
        .filter(|id| !id.is_empty())
        .ok_or(SesError::MissingMessageId)?;

    let empty = Map::new();
    let object = parsed
        .rest
        .get(event.object_key())
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let timestamp_ms = [
        object.get("timestamp").and_then(Value::as_str),
        mail.timestamp.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find_map(rfc3339_to_ms)
    .ok_or(SesError::MissingTimestamp)?;
    let (failure, details) = event.describe(object);

    Ok(StatusUpdate {
        channel: Channel::Email,
        provider_message_id,
        event: name,
        status: event.status(),
        timestamp_ms,
        idempotency_key: format!("sns:{sns_message_id}"),
        failure,
        details,
        stored: Default::default(),
    })
}

/// Returns the Unix milliseconds of an RFC 3339 time, if it is one.
fn rfc3339_to_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// Returns an object with the non-null values of `keys` in `object`, or
/// `Null` when there are none.
fn pick(object: &Map<String, Value>, keys: &[&str]) -> Value {
    let kept: Map<String, Value> = keys
        .iter()
        .filter_map(|key| {
            let value = object.get(*key).filter(|value| !value.is_null())?;
            Some(((*key).to_owned(), value.clone()))
        })
        .collect();
    if kept.is_empty() {
        Value::Null
    } else {
        Value::Object(kept)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::sns::shared_vectors;
    use super::*;

    const SNS_ID: &str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324";

    fn parse(message: &Value) -> StatusUpdate {
        parse_ses_message(&message.to_string(), SNS_ID).unwrap()
    }

    fn mail(id: &str) -> Value {
        json!({"timestamp": "2024-01-01T00:00:00.000Z", "messageId": id, "destination": ["a@example.com"]})
    }

    const MAIL_MS: i64 = 1_704_067_200_000;
    const EVENT_MS: i64 = 1_704_067_201_500;
    const EVENT_TS: &str = "2024-01-01T00:00:01.500Z";

    /// Hand-written minimal messages for every event type: type, object key,
    /// object, whether the object carries its own timestamp, status.
    #[rustfmt::skip]
    const MINIMAL: [(&str, &str, &str, bool, Option<Status>); 10] = [
        ("Send", "send", "{}", false, Some(Status::Sent)),
        ("Delivery", "delivery", r#"{"recipients":["a@example.com"],"smtpResponse":"250 ok"}"#, true, Some(Status::Delivered)),
        ("Open", "open", "{}", true, Some(Status::Read)),
        ("Click", "click", r#"{"link":"https://example.com/"}"#, true, Some(Status::Clicked)),
        ("Bounce", "bounce", r#"{"bounceType":"Transient","bounceSubType":"MailboxFull",
            "bouncedRecipients":[{"emailAddress":"a@example.com"}]}"#, true, Some(Status::Failed)),
        ("Complaint", "complaint", r#"{"complainedRecipients":[{"emailAddress":"a@example.com"}]}"#, true, Some(Status::Complained)),
        ("Reject", "reject", r#"{"reason":"Bad content"}"#, false, Some(Status::Failed)),
        ("Rendering Failure", "failure", r#"{"templateName":"T"}"#, false, Some(Status::Failed)),
        ("DeliveryDelay", "deliveryDelay", r#"{"delayType":"MailboxFull"}"#, true, None),
        ("Subscription", "subscription", r#"{"contactList":"L"}"#, true, None),
    ];

    /// Returns the minimal message of `name`, typed by `kind_key`
    /// (`eventType` or `notificationType`).
    fn minimal(kind_key: &str, name: &str) -> Value {
        let (_, key, object, dated, _) = MINIMAL.iter().find(|row| row.0 == name).unwrap();
        let mut object: Value = serde_json::from_str(object).unwrap();
        if *dated {
            object["timestamp"] = EVENT_TS.into();
        }
        let mut message = json!({ kind_key: name, "mail": mail("m-1") });
        message[*key] = object;
        message
    }

    #[test]
    fn every_event_type_maps_in_both_forms() {
        for kind_key in ["eventType", "notificationType"] {
            for (name, _, _, dated, status) in MINIMAL {
                let update = parse(&minimal(kind_key, name));
                assert_eq!(update.channel, Channel::Email);
                assert_eq!(update.provider_message_id, "m-1");
                assert_eq!(update.event, name);
                assert_eq!(update.status, status, "{name}");
                assert_eq!(
                    update.timestamp_ms,
                    if dated { EVENT_MS } else { MAIL_MS },
                    "{name}"
                );
                assert_eq!(update.idempotency_key, format!("sns:{SNS_ID}"));
                let failed = status == Some(Status::Failed);
                assert_eq!(update.failure.is_some(), failed, "{name}");
            }
        }
    }

    #[test]
    fn failures_and_details_are_kept() {
        let bounce = parse(&minimal("eventType", "Bounce"));
        assert_eq!(
            bounce.failure,
            Some(Failure {
                code: "Transient/MailboxFull".into(),
                title: "Transient bounce (MailboxFull)".into()
            })
        );
        assert_eq!(
            bounce.details,
            json!({"bounceType": "Transient", "bounceSubType": "MailboxFull",
                   "bouncedRecipients": [{"emailAddress": "a@example.com"}]})
        );
        let reject = parse(&minimal("eventType", "Reject"));
        assert_eq!(
            reject.failure,
            Some(Failure {
                code: "Reject".into(),
                title: "Bad content".into()
            })
        );
        let rendering = parse(&minimal("eventType", "Rendering Failure"));
        assert_eq!(
            rendering.failure,
            Some(Failure {
                code: "RenderingFailure".into(),
                title: "template T failed to render".into()
            })
        );
        assert_eq!(parse(&minimal("eventType", "Send")).details, Value::Null);
        assert_eq!(
            parse(&minimal("eventType", "Click")).details,
            json!({"link": "https://example.com/"})
        );
        assert_eq!(
            parse(&minimal("eventType", "DeliveryDelay")).details,
            json!({"delayType": "MailboxFull"})
        );
        assert_eq!(
            parse(&minimal("eventType", "Subscription")).details,
            json!({"contactList": "L"})
        );
    }

    #[test]
    fn bounce_without_its_object_still_fails_the_message() {
        let update = parse(&json!({"notificationType": "Bounce", "mail": mail("m-2")}));
        assert_eq!(update.status, Some(Status::Failed));
        assert_eq!(update.timestamp_ms, MAIL_MS);
        assert_eq!(update.failure.unwrap().code, "Undetermined/Undetermined");
    }

    #[test]
    fn unparseable_event_timestamp_falls_back_to_mail() {
        let update = parse(
            &json!({"eventType": "Open", "mail": mail("m"), "open": {"timestamp": "yesterday"}}),
        );
        assert_eq!(update.timestamp_ms, MAIL_MS);
        let offset = parse(
            &json!({"eventType": "Open", "mail": mail("m"), "open": {"timestamp": "2024-01-01T01:00:00+01:00"}}),
        );
        assert_eq!(offset.timestamp_ms, MAIL_MS);
    }

    #[test]
    fn event_type_wins_over_notification_type_and_extra_fields_are_ignored() {
        let update = parse(&json!({
            "eventType": "Delivery", "notificationType": "Bounce", "mail": mail("m"),
            "delivery": {"timestamp": EVENT_TS, "future": [1, 2]}, "somethingNew": {"x": true}
        }));
        assert_eq!(update.status, Some(Status::Delivered));
        assert_eq!(update.details, Value::Null);
    }

    #[test]
    fn uninterpretable_messages_are_errors() {
        let error = |message: &str| parse_ses_message(message, SNS_ID).unwrap_err();
        assert!(matches!(
            error("Successfully validated SNS topic for Amazon SES event publishing."),
            SesError::Malformed(_)
        ));
        assert!(matches!(error("[1]"), SesError::Malformed(_)));
        assert!(matches!(
            error(r#"{"mail": {"messageId": "m"}}"#),
            SesError::MissingEventType
        ));
        assert!(matches!(
            error(r#"{"notificationType": "AmazonSnsSubscriptionSucceeded", "mail": {"messageId": "m"}}"#),
            SesError::UnknownEventType(name) if name == "AmazonSnsSubscriptionSucceeded"
        ));
        assert!(matches!(
            error(r#"{"eventType": "Open"}"#),
            SesError::MissingMessageId
        ));
        assert!(matches!(
            error(
                r#"{"eventType": "Open", "mail": {"messageId": "", "timestamp": "2024-01-01T00:00:00Z"}}"#
            ),
            SesError::MissingMessageId
        ));
        assert!(matches!(
            error(r#"{"eventType": "Send", "mail": {"messageId": "m", "timestamp": "nope"}}"#),
            SesError::MissingTimestamp
        ));
    }

    /// AWS's documented examples (awsdocs/amazon-ses-developer-guide), read
    /// in place from the shared vectors.
    #[test]
    fn aws_documented_examples_map() {
        let dir = shared_vectors("ses");
        #[rustfmt::skip]
        let cases: [(&str, &str, Option<Status>, i64); 15] = [
            ("event-send", "Send", Some(Status::Sent), 1_476_421_336_645),
            ("event-delivery", "Delivery", Some(Status::Delivered), 1_476_919_264_133),
            ("event-open", "Open", Some(Status::Read), 1_502_316_019_652),
            ("event-click", "Click", Some(Status::Clicked), 1_502_322_685_570),
            ("event-bounce-permanent", "Bounce", Some(Status::Failed), 1_501_893_662_669),
            ("event-complaint", "Complaint", Some(Status::Complained), 1_501_893_662_669),
            ("event-reject", "Reject", Some(Status::Failed), 1_476_466_695_211),
            ("event-rendering-failure", "Rendering Failure", Some(Status::Failed), 1_516_646_586_197),
            ("event-delivery-delay", "DeliveryDelay", None, 1_592_267_140_095),
            ("event-subscription", "Subscription", None, 1_641_949_217_910),
            ("notification-bounce-no-dsn", "Bounce", Some(Status::Failed), 1_453_906_778_237),
            ("notification-bounce-with-dsn", "Bounce", Some(Status::Failed), 1_453_906_778_237),
            ("notification-complaint-no-feedback", "Complaint", Some(Status::Complained), 1_453_906_778_237),
            ("notification-complaint-with-feedback", "Complaint", Some(Status::Complained), 1_453_906_778_237),
            ("notification-delivery", "Delivery", Some(Status::Delivered), 1_453_906_778_237),
        ];
        let mut updates = std::collections::HashMap::new();
        for (file, event, status, ts) in cases {
            let text = std::fs::read_to_string(dir.join(format!("awsdocs-{file}.json"))).unwrap();
            let raw: Value = serde_json::from_str(&text).unwrap();
            let update = parse_ses_message(&text, SNS_ID).unwrap();
            assert_eq!(update.event, event, "{file}");
            assert_eq!(update.status, status, "{file}");
            assert_eq!(update.timestamp_ms, ts, "{file}");
            assert_eq!(
                update.provider_message_id, raw["mail"]["messageId"],
                "{file}"
            );
            assert_eq!(update.idempotency_key, format!("sns:{SNS_ID}"));
            updates.insert(file, update);
        }

        let failure = |file: &str| updates[file].failure.clone().unwrap();
        assert_eq!(
            failure("event-bounce-permanent"),
            Failure {
                code: "Permanent/General".into(),
                title: "smtp; 550 5.1.1 user unknown".into()
            }
        );
        assert_eq!(
            failure("notification-bounce-no-dsn").title,
            "Permanent bounce (General)"
        );
        let dsn = failure("notification-bounce-with-dsn");
        assert_eq!(dsn.title, "smtp; 550 5.1.1 <jane@example.com>... User");
        assert_eq!(failure("event-reject").title, "Bad content");
        let rendering = failure("event-rendering-failure");
        assert_eq!(rendering.code, "RenderingFailure");
        assert_eq!(
            rendering.title,
            "Attribute 'attributeName' is not present in the rendering data."
        );

        #[rustfmt::skip]
        let details = [
            ("notification-bounce-no-dsn", "/bouncedRecipients/1/emailAddress", Some("richard@example.com")),
            ("event-bounce-permanent", "/bounceSubType", Some("General")),
            ("event-complaint", "/complaintFeedbackType", Some("abuse")),
            ("notification-complaint-with-feedback", "/complaintFeedbackType", Some("abuse")),
            ("notification-complaint-no-feedback", "/complaintFeedbackType", None),
            ("notification-complaint-no-feedback", "/complainedRecipients/0/emailAddress", Some("richard@example.com")),
            ("event-delivery-delay", "/delayType", Some("TransientCommunicationFailure")),
            ("event-subscription", "/contactList", Some("ContactListName")),
            ("event-click", "/link", Some("http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html")),
            ("event-delivery", "/smtpResponse", Some("250 2.6.0 Message received")),
        ];
        for (file, pointer, expected) in details {
            let actual = updates[file]
                .details
                .pointer(pointer)
                .and_then(Value::as_str);
            assert_eq!(actual, expected, "{file} {pointer}");
        }
        assert_eq!(updates["event-send"].details, Value::Null);
        for file in [
            "event-send",
            "event-open",
            "event-delivery",
            "event-click",
            "event-complaint",
            "notification-delivery",
        ] {
            assert!(updates[file].failure.is_none(), "{file}");
        }
    }
}
