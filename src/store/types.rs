//! What the store hands out: its error type and the rows it reads, as data
//! (domain types, Unix milliseconds, bodies as bytes). How they show in JSON
//! is the HTTP layer's business (`api`, `ops`).

use crate::domain::{Channel, CurrentStatus, Failure, Status, StatusSet};

/// Errors of the storage layer. Callers map them to 503 (the store is down or
/// busy: providers retry) and log the cause; clients never see SQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// An error of the SQLite writer's own connection.
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed (or its writer thread is gone).
    #[error("the store is closed")]
    Closed,
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

/// Where a known message lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageRef {
    pub message_pk: i64,
    pub campaign_pk: i64,
}

/// A campaign's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignInfo {
    pub campaign_pk: i64,
    pub tenant_id: String,
    pub campaign_id: String,
}

/// A stored message with its campaign and timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub tenant_id: String,
    pub campaign_id: String,
    pub channel: Channel,
    pub provider_message_id: String,
    pub recipient: Option<String>,
    /// The current status, as stored beside the set.
    pub status: CurrentStatus,
    /// The statuses seen, with the first provider timestamp of each
    /// status observed directly.
    pub set: StatusSet,
    pub failure: Option<Failure>,
    /// The stored notifications, oldest provider timestamp first.
    pub timeline: Vec<StoredEvent>,
}

/// One provider notification in a message's timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Row id in `status_events`.
    pub id: i64,
    /// The provider's name of the event (`read`, `Bounce`…).
    pub event: String,
    /// The status the event meant, if any.
    pub status: Option<Status>,
    /// Whether this event changed the message's status set.
    pub changed: bool,
    /// Provider timestamp, Unix milliseconds.
    pub provider_ts_ms: i64,
    /// When statushub received it, Unix milliseconds.
    pub received_at_ms: i64,
    /// Provider details kept with the event; `Null` when there are none.
    pub details: serde_json::Value,
}

/// One stored event for the debug log: a notification applied to a
/// registered message, or one buffered until its message is registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentEvent {
    /// Row id in the table `kind` names.
    pub id: i64,
    pub kind: RecentKind,
    pub channel: Channel,
    pub provider_message_id: String,
    /// The message's campaign; `None` while it is unmatched.
    pub tenant_id: Option<String>,
    pub campaign_id: Option<String>,
    /// The provider's name of the event.
    pub event: String,
    /// The status the event means, if any.
    pub status: Option<Status>,
    /// Whether this event changed the message's status set (never for an
    /// unmatched one).
    pub changed: bool,
    /// Provider timestamp, Unix milliseconds.
    pub provider_ts_ms: i64,
    /// When statushub received it, Unix milliseconds.
    pub received_at_ms: i64,
}

/// Where a [`RecentEvent`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecentKind {
    /// In a message's timeline (`status_events`).
    Applied,
    /// Buffered until its message is registered (`unmatched_statuses`).
    Unmatched,
}

/// Row counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub campaigns: i64,
    pub messages: i64,
    pub events_stored: i64,
    pub unmatched_buffered: i64,
    pub dead_letters: i64,
}

/// A stored dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub channel: Channel,
    pub reason: String,
    pub content_type: Option<String>,
    /// The body as received; in listings, only its first bytes.
    pub body: Vec<u8>,
    /// The stored body's whole length.
    pub body_bytes: i64,
    /// When statushub received it, Unix milliseconds.
    pub received_at_ms: i64,
    /// How its sender was verified when it arrived.
    pub verification: ReceiptVerification,
    /// Whether it still waits for a replay that applies it (never
    /// replayed, or its last replay left something uninterpretable).
    pub open: bool,
    /// What its last replay did; `None` when it was never replayed.
    pub replay: Option<ReplayRecord>,
}

/// How the sender of a dead letter was verified when it arrived: what
/// allows replaying it without a second signature check (see
/// `webhooks::replay`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptVerification {
    /// Meta's `X-Hub-Signature-256` matched (HMAC-SHA256 of the body under
    /// the app secret).
    HmacSha256,
    /// The SNS signature verified under the certificate at `cert_url`.
    SnsSignature { cert_url: String },
    /// Verification was disabled: nobody vouches for the payload.
    Disabled,
    /// Stored before statushub recorded verification: unknown.
    Unknown,
}

impl ReceiptVerification {
    /// The name stored and shown (`hmac-sha256`, `sns-signature`,
    /// `disabled`, `unknown`).
    pub fn method(&self) -> &'static str {
        match self {
            ReceiptVerification::HmacSha256 => "hmac-sha256",
            ReceiptVerification::SnsSignature { .. } => "sns-signature",
            ReceiptVerification::Disabled => "disabled",
            ReceiptVerification::Unknown => "unknown",
        }
    }

    /// The detail stored beside the method (the SNS certificate URL).
    pub fn detail(&self) -> Option<&str> {
        match self {
            ReceiptVerification::SnsSignature { cert_url } => Some(cert_url),
            _ => None,
        }
    }

    /// Whether a signature was verified at receipt.
    pub fn signed(&self) -> bool {
        matches!(
            self,
            ReceiptVerification::HmacSha256 | ReceiptVerification::SnsSignature { .. }
        )
    }

    /// Reads the stored columns (`NULL` method: a row older than the
    /// record, unknown).
    pub fn from_columns(method: Option<&str>, detail: Option<String>) -> Result<Self, StoreError> {
        match method {
            None => Ok(ReceiptVerification::Unknown),
            Some("hmac-sha256") => Ok(ReceiptVerification::HmacSha256),
            Some("sns-signature") => Ok(ReceiptVerification::SnsSignature {
                cert_url: detail.unwrap_or_default(),
            }),
            Some("disabled") => Ok(ReceiptVerification::Disabled),
            Some(other) => Err(StoreError::Corrupt(format!(
                "unknown dead-letter verification {other}"
            ))),
        }
    }
}

/// What a replay of a dead letter did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Everything was interpreted and applied: the letter is closed.
    Applied,
    /// Some statuses were applied, some parts are still uninterpretable:
    /// the letter stays open.
    Partial,
    /// Nothing could be interpreted: the letter stays open.
    Failed,
}

impl ReplayOutcome {
    /// The name stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Applied => "applied",
            ReplayOutcome::Partial => "partial",
            ReplayOutcome::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "applied" => Ok(ReplayOutcome::Applied),
            "partial" => Ok(ReplayOutcome::Partial),
            "failed" => Ok(ReplayOutcome::Failed),
            other => Err(StoreError::Corrupt(format!(
                "unknown replay outcome {other}"
            ))),
        }
    }
}

/// The last replay of a dead letter, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRecord {
    /// When it ran, Unix milliseconds.
    pub replayed_at_ms: i64,
    pub outcome: ReplayOutcome,
    /// What stayed uninterpretable (`partial`, `failed`).
    pub error: Option<String>,
    /// Statuses the payload carried, and what became of them.
    pub received: i64,
    pub applied: i64,
    pub duplicates: i64,
    pub unmatched: i64,
    /// Replays run so far.
    pub replays: i64,
}

/// Which dead letters a listing returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterState {
    /// Not applied by a replay yet (the default).
    #[default]
    Open,
    /// Applied by a replay.
    Replayed,
    /// Both.
    All,
}

/// Where a status event is in the order tenant streams follow:
/// `(xact, event_id)`, compared in that order. `xact` is the id of the
/// transaction that wrote the event on PostgreSQL, whose event ids are not
/// in commit order (see `store::postgres::follow`), and 0 on SQLite, whose
/// event ids are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub xact: i64,
    pub event_id: i64,
}
