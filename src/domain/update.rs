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
}

/// What a provider parser made of one payload: the updates it understood and
/// a description of each part it could not interpret (the caller keeps the
/// raw payload as a dead letter when there is any).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub updates: Vec<StatusUpdate>,
    pub problems: Vec<String>,
}
