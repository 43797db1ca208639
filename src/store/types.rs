//! What the store hands out: its error type and the rows it reads, as data
//! (domain types, Unix milliseconds, bodies as bytes). How they show in JSON
//! is the HTTP layer's business (`api`, `ops`).

use serde::Serialize;

use crate::domain::{Channel, CurrentStatus, Failure, Status, StatusSet};

/// Errors of the storage layer. Callers map them to 503 (the store is down or
/// busy: providers retry) and log the cause; clients never see SQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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

/// One stored event for the debug log (`GET /webhooks/events`).
#[derive(Clone, Debug, Serialize)]
pub struct RecentEvent {
    pub id: i64,
    pub kind: &'static str,
    pub channel: String,
    pub provider_message_id: String,
    pub tenant_id: Option<String>,
    pub campaign_id: Option<String>,
    pub event: String,
    pub status: Option<String>,
    pub changed: bool,
    pub provider_at: String,
    pub received_at: String,
}

/// Row counts for `/webhooks/health`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStats {
    pub campaigns: i64,
    pub messages: i64,
    pub events_stored: i64,
    pub unmatched_buffered: i64,
    pub dead_letters: i64,
}

/// A stored dead letter, for the debug page.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterView {
    pub id: i64,
    pub channel: String,
    pub reason: String,
    pub content_type: Option<String>,
    /// The body as text (lossy where it is not UTF-8); in listings, only
    /// its first bytes.
    pub body: String,
    /// The stored body's whole length.
    pub body_bytes: i64,
    /// Whether `body` is cut (listings; `GET /webhooks/dead-letters/{id}`
    /// gives the whole body).
    pub body_truncated: bool,
    pub received_at: String,
}
