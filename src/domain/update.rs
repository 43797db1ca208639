//! The provider-neutral status update every webhook parser produces.

use serde::{Deserialize, Serialize};

use super::status::Status;

/// The channel a message was sent through; with the provider message id it
/// identifies a message across tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Meta's WhatsApp Cloud API.
    Whatsapp,
    /// AWS SES, notified through SNS.
    Email,
}

impl Channel {
    /// Returns the lowercase wire name (`whatsapp`, `email`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Email => "email",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "whatsapp" => Some(Channel::Whatsapp),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message failed, as the provider said it (WhatsApp `errors[0]`, SES
/// bounce type and sub-type, reject reason).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// Provider error code (`131026`, `Permanent/General`, `Reject`).
    pub code: String,
    /// Human-readable reason.
    pub title: String,
}

/// One provider notification about one message, already verified and parsed.
///
/// Parsers (`webhooks::whatsapp::payload`, `webhooks::ses::event`) produce
/// these; the hub applies them. `status` is `None` for events that only go in
/// the timeline (SES `DeliveryDelay`, `Subscription`, a WhatsApp status value
/// statushub does not know).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub channel: Channel,
    /// The provider's id of the message (`wamid.…`, SES `mail.messageId`).
    pub provider_message_id: String,
    /// The provider's own name of the event (`read`, `played`, `Bounce`, `DeliveryDelay`).
    pub event: String,
    /// The status this event means for the status algebra, if any.
    pub status: Option<Status>,
    /// Provider timestamp, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Key that identifies this provider notification: a redelivery carries
    /// the same key (WhatsApp: `wa:<message id>:<status>`; SNS: `sns:<MessageId>`).
    pub idempotency_key: String,
    /// Failure reason when the event is a failure.
    pub failure: Option<Failure>,
    /// Provider details worth keeping in the timeline (bounce recipients,
    /// click link, pricing), as JSON; `Null` when there are none.
    pub details: serde_json::Value,
    /// The text the timeline stores, made once ([`StatusUpdate::stored_details`]).
    #[serde(skip)]
    pub stored: StoredDetails,
}

impl StatusUpdate {
    /// The JSON kept in the event's `details` column: the provider's
    /// details with the failure, if any; `None` when there is neither.
    ///
    /// Made on first use and kept: the hub asks on the HTTP worker that
    /// parsed the webhook, so the one SQLite writer thread, which every
    /// commit waits for, only copies the text.
    pub fn stored_details(&self) -> Option<&str> {
        self.stored
            .0
            .get_or_init(|| details_text(&self.details, self.failure.as_ref()))
            .as_deref()
    }
}

fn details_text(details: &serde_json::Value, failure: Option<&Failure>) -> Option<String> {
    if details.is_null() && failure.is_none() {
        return None;
    }
    let Some(failure) = failure else {
        // The common case, serialized in place: no copy of the details.
        return Some(details.to_string());
    };
    let mut details = details.clone();
    if let Some(object) = details.as_object_mut() {
        object.insert("failure".to_owned(), serde_json::json!(failure));
    } else {
        details = serde_json::json!({ "failure": failure });
    }
    Some(details.to_string())
}

/// [`StatusUpdate::stored_details`] once made: a cache of the update's own
/// fields, so it never makes two updates differ, and a clone (which may be
/// changed) starts without it.
#[derive(Debug, Default)]
pub struct StoredDetails(std::sync::OnceLock<Option<String>>);

impl Clone for StoredDetails {
    fn clone(&self) -> Self {
        StoredDetails::default()
    }
}

impl PartialEq for StoredDetails {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a provider parser made of one payload: the updates it understood and
/// a description of each part it could not interpret (the caller keeps the
/// raw payload as a dead letter when there is any).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub updates: Vec<StatusUpdate>,
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(details: serde_json::Value, failure: Option<Failure>) -> StatusUpdate {
        StatusUpdate {
            channel: Channel::Whatsapp,
            provider_message_id: "wamid.1".to_owned(),
            event: "failed".to_owned(),
            status: Some(Status::Failed),
            timestamp_ms: 0,
            idempotency_key: "wa:wamid.1:failed".to_owned(),
            failure,
            details,
            stored: StoredDetails::default(),
        }
    }

    #[test]
    fn stored_details_hold_the_failure_and_a_changed_clone_is_made_again() {
        let failure = Failure {
            code: "131026".to_owned(),
            title: "Message undeliverable".to_owned(),
        };
        assert_eq!(update(serde_json::Value::Null, None).stored_details(), None);
        let failed = update(
            serde_json::json!({"recipient_id": "1"}),
            Some(failure.clone()),
        );
        let stored: serde_json::Value =
            serde_json::from_str(failed.stored_details().unwrap()).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"recipient_id": "1", "failure": {"code": "131026", "title": "Message undeliverable"}})
        );
        assert_eq!(
            update(serde_json::Value::Null, Some(failure)).stored_details(),
            Some(r#"{"failure":{"code":"131026","title":"Message undeliverable"}}"#)
        );

        let mut changed = failed.clone();
        changed.failure = None;
        assert_eq!(changed.stored_details(), Some(r#"{"recipient_id":"1"}"#));
        let fresh = update(serde_json::json!({"recipient_id": "1"}), None);
        assert_eq!(changed, fresh, "the cache never makes two updates differ");
    }
}
