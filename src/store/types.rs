//! What the store hands out: its error type and the rows it reads, shaped
//! for the callers.

use serde::Serialize;

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

/// A message and its timeline, for `GET /api/v1/messages/{channel}/{id}`.
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    pub tenant_id: String,
    pub campaign_id: String,
    pub channel: String,
    pub provider_message_id: String,
    pub recipient: Option<String>,
    pub status: String,
    pub seen: Vec<SeenStatus>,
    pub error: Option<crate::domain::Failure>,
    pub timeline: Vec<TimelineEvent>,
}

/// One status of a message's seen set, with its first provider timestamp
/// (absent for a status that was only implied).
#[derive(Clone, Debug, Serialize)]
pub struct SeenStatus {
    pub status: String,
    pub first_at: Option<String>,
}

/// One provider notification in a message's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEvent {
    pub id: i64,
    pub event: String,
    pub status: Option<String>,
    /// Whether this event changed the message's status set.
    pub changed: bool,
    pub provider_at: String,
    pub received_at: String,
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
