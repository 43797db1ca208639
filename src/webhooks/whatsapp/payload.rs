//! Meta's webhook payload: `entry[].changes[].value.statuses[]` into
//! [`StatusUpdate`]s.
//!
//! Parsing is lenient by part: a status that cannot be interpreted becomes a
//! problem (the caller dead-letters the raw payload) without losing the
//! statuses beside it. Changes other than statuses (inbound `messages`,
//! template or account updates) are acknowledged and ignored.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{Channel, Failure, Parsed, Status, StatusUpdate};

/// The `object` every WhatsApp Business webhook carries.
const OBJECT: &str = "whatsapp_business_account";

/// A WhatsApp Business webhook, as Meta posts it (only the parts statushub
/// reads; anything else is ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppWebhook)]
pub(crate) struct Envelope {
    /// Always `whatsapp_business_account`.
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppEntry)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppChange)]
struct Change {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = WhatsAppChangeValue)]
struct ChangeValue {
    /// Each is read on its own: one that does not parse is dead-lettered
    /// without losing the others.
    #[serde(default)]
    #[schema(value_type = Vec<RawStatus>)]
    statuses: Vec<Value>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppStatus)]
struct RawStatus {
    id: String,
    status: String,
    timestamp: Timestamp,
    #[serde(default)]
    errors: Vec<RawError>,
}

/// Meta sends Unix seconds as a string; accept a number too.
#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppTimestamp)]
#[serde(untagged)]
enum Timestamp {
    Text(String),
    Number(i64),
}

#[derive(Deserialize, ToSchema)]
#[schema(as = WhatsAppError)]
struct RawError {
    /// A number or a string.
    code: Value,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Returns the updates in a WhatsApp webhook body and what could not be
/// interpreted. `Err` when the body is not a WhatsApp payload at all.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|error| format!("not a whatsapp payload: {error}"))?;
    if envelope.object != OBJECT {
        return Err(format!(
            "unexpected object {:?}",
            truncate(&envelope.object)
        ));
    }
    let mut parsed = Parsed::default();
    for entry in envelope.entry {
        for change in entry.changes {
            if change
                .field
                .as_deref()
                .is_some_and(|field| field != "messages")
            {
                continue;
            }
            for status in change.value.statuses {
                match parse_status(status) {
                    Ok(update) => parsed.updates.push(update),
                    Err(problem) => parsed.problems.push(problem),
                }
            }
        }
    }
    Ok(parsed)
}

fn parse_status(value: Value) -> Result<StatusUpdate, String> {
    let raw = RawStatus::deserialize(&value)
        .map_err(|error| format!("uninterpretable status: {error}"))?;
    if raw.id.is_empty() || raw.id.len() > 256 {
        return Err("status with an empty or oversized message id".to_owned());
    }
    let seconds = match &raw.timestamp {
        Timestamp::Text(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("status timestamp {:?} is not a number", truncate(text)))?,
        Timestamp::Number(number) => *number,
    };
    let timestamp_ms = seconds
        .checked_mul(1000)
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| format!("status timestamp {seconds} out of range"))?;
    let status = match raw.status.as_str() {
        "sent" => Some(Status::Sent),
        "delivered" => Some(Status::Delivered),
        "read" | "played" => Some(Status::Read),
        "failed" => Some(Status::Failed),
        // Kept in the timeline without a status change (e.g. `deleted`, `warning`).
        _ => None,
    };
    if raw.status.is_empty() || raw.status.len() > 64 {
        return Err("status with an empty or oversized status value".to_owned());
    }
    let failure = raw.errors.first().map(|error| Failure {
        code: match &error.code {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        },
        title: error
            .title
            .clone()
            .or_else(|| error.message.clone())
            .unwrap_or_default(),
    });
    let details = details(&value);
    Ok(StatusUpdate {
        channel: Channel::Whatsapp,
        idempotency_key: format!("wa:{}:{}", raw.id, raw.status),
        provider_message_id: raw.id,
        event: raw.status,
        status,
        timestamp_ms,
        failure: if status == Some(Status::Failed) {
            failure
        } else {
            None
        },
        details,
        stored: Default::default(),
    })
}

/// Keeps the parts of a status worth showing in a timeline.
fn details(status: &Value) -> Value {
    const KEPT: [&str; 6] = [
        "recipient_id",
        "errors",
        "conversation",
        "pricing",
        "biz_opaque_callback_data",
        "recipient_type",
    ];
    let Some(object) = status.as_object() else {
        return Value::Null;
    };
    let kept: serde_json::Map<String, Value> = KEPT
        .iter()
        .filter_map(|key| {
            object
                .get(*key)
                .map(|value| ((*key).to_owned(), value.clone()))
        })
        .collect();
    if kept.is_empty() {
        Value::Null
    } else {
        Value::Object(kept)
    }
}

/// Wraps status objects in the envelope Meta posts them in (one entry, one
/// `messages` change), for `statushub simulate`, the load generator and
/// tests, which must send what Meta sends.
pub fn envelope(statuses: Vec<Value>) -> Value {
    serde_json::json!({
        "object": OBJECT,
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                    "statuses": statuses
                }
            }]
        }]
    })
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// Parses a pywa capture from the shared vectors; a missing folder or
    /// file fails the test.
    fn vector(name: &str) -> Parsed {
        let dir = crate::webhooks::ses::sns::shared_vectors("whatsapp");
        let body = std::fs::read(dir.join(format!("pywa-status-{name}.json"))).unwrap();
        parse(&body).unwrap()
    }

    #[test]
    fn every_captured_status_parses() {
        let cases = [
            ("sent", Some(Status::Sent)),
            ("delivered", Some(Status::Delivered)),
            ("read", Some(Status::Read)),
            ("played", Some(Status::Read)),
            ("failed", Some(Status::Failed)),
            ("group", Some(Status::Read)),
            ("with-tracker", Some(Status::Sent)),
        ];
        for (name, expected) in cases {
            let parsed = vector(name);
            assert!(parsed.problems.is_empty(), "{name}: {:?}", parsed.problems);
            assert_eq!(parsed.updates.len(), 1, "{name}");
            assert_eq!(parsed.updates[0].status, expected, "{name}");
            assert!(parsed.updates[0].timestamp_ms > 1_600_000_000_000, "{name}");
        }
    }

    #[test]
    fn failed_keeps_error_code_and_title() {
        let parsed = vector("failed");
        let failure = parsed.updates[0].failure.clone().unwrap();
        assert_eq!(failure.code, "130472");
        assert_eq!(failure.title, "User's number is part of an experiment");
    }

    #[test]
    fn played_is_read_but_keeps_its_name() {
        let parsed = vector("played");
        assert_eq!(parsed.updates[0].event, "played");
        assert_eq!(parsed.updates[0].idempotency_key, "wa:wamid.xyzxyz:played");
    }

    #[test]
    fn unknown_status_is_timeline_only() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages",
            "value":{"statuses":[{"id":"wamid.1","status":"deleted","timestamp":"1700000000"}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.updates[0].status, None);
        assert_eq!(parsed.updates[0].event, "deleted");
    }

    #[test]
    fn bad_status_is_a_problem_beside_good_ones() {
        let body =
            br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages",
            "value":{"statuses":[{"id":"wamid.1","status":"read","timestamp":"soon"},
                                 {"id":"wamid.2","status":"read","timestamp":"1700000000"}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.updates.len(), 1);
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn inbound_messages_are_ignored() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages",
            "value":{"messages":[{"id":"wamid.in","from":"1","type":"text","text":{"body":"hi"}}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert!(parsed.updates.is_empty() && parsed.problems.is_empty());
    }

    #[test]
    fn other_shapes_are_refused() {
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"object":"page","entry":[]}"#).is_err());
        assert!(parse(br#"{"object":"whatsapp_business_account","entry":"x"}"#).is_err());
        assert!(parse(br#"[]"#).is_err());
    }
}
