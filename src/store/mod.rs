//! Durable storage: one [`Store`] type over the backends, the write
//! operations the DB actor commits in batches, and the reads the hub and the
//! API need.
//!
//! Writes go through one path, [`Store::commit`], which the DB actor calls
//! with everything queued since its previous commit. A commit computes each
//! message's transition from the row it reads *inside* the transaction
//! (pure [`crate::domain`] algebra) and changes counters by deltas, so the
//! counters always equal a `COUNT` over `messages`, whatever the order of
//! arrival, and no in-memory copy of a message has to be trusted.

mod batch;
mod sqlite;

use serde::Serialize;

pub use batch::{
    Applied, Apply, Batch, BatchOutcome, Buffer, DeadLetter, EnsureCampaign, NewMessage, Prune,
    PruneTarget, Register, RegisterReceipt, Registered, StatusChange, UpdateOutcome, Weight,
};
pub use sqlite::SqliteStore;

use crate::config::SqliteSynchronous;
use crate::domain::{CampaignCounters, Channel};

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

/// The store, over whichever backend `DATABASE_URL` selects.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens the database named by `url`, creating an SQLite file if needed,
    /// and runs the migrations.
    pub async fn connect(url: &str, synchronous: SqliteSynchronous) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            let store = SqliteStore::connect(url, synchronous).await?;
            Ok(Store::Sqlite(store))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Err(StoreError::UnsupportedUrl(
                "the PostgreSQL backend is not built yet; use sqlite://".to_owned(),
            ))
        } else {
            Err(StoreError::UnsupportedUrl(
                "expected sqlite:// or postgres://".to_owned(),
            ))
        }
    }

    /// Commits a batch of writes in one transaction and returns their
    /// outcomes, kind by kind, in the batch's order.
    pub async fn commit(&self, batch: &Batch, now_ms: i64) -> Result<BatchOutcome, StoreError> {
        match self {
            Store::Sqlite(store) => store.commit(batch, now_ms).await,
        }
    }

    /// Finds the registered messages among `provider_message_ids`.
    pub async fn resolve(
        &self,
        channel: Channel,
        provider_message_ids: &[&str],
    ) -> Result<Vec<(String, MessageRef)>, StoreError> {
        match self {
            Store::Sqlite(store) => store.resolve(channel, provider_message_ids).await,
        }
    }

    /// Returns a campaign's identity and committed counters.
    pub async fn campaign_counters(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<CampaignCounters>, StoreError> {
        match self {
            Store::Sqlite(store) => store.campaign_counters(campaign_pk).await,
        }
    }

    /// Finds campaigns named `campaign_id`, in `tenant_id` when given.
    pub async fn find_campaigns(
        &self,
        tenant_id: Option<&str>,
        campaign_id: &str,
    ) -> Result<Vec<CampaignInfo>, StoreError> {
        match self {
            Store::Sqlite(store) => store.find_campaigns(tenant_id, campaign_id).await,
        }
    }

    /// Returns a message with its timeline.
    pub async fn message(
        &self,
        channel: Channel,
        provider_message_id: &str,
    ) -> Result<Option<MessageView>, StoreError> {
        match self {
            Store::Sqlite(store) => store.message(channel, provider_message_id).await,
        }
    }

    /// Returns the newest stored events (applied and unmatched), newest first.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<RecentEvent>, StoreError> {
        match self {
            Store::Sqlite(store) => store.recent_events(limit).await,
        }
    }

    /// Returns the newest dead letters with ids below `before`, newest
    /// first, bodies cut to `body_limit` bytes.
    pub async fn dead_letters(
        &self,
        limit: u32,
        before: Option<i64>,
        body_limit: u32,
    ) -> Result<Vec<DeadLetterView>, StoreError> {
        match self {
            Store::Sqlite(store) => store.dead_letters(limit, before, body_limit).await,
        }
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetterView>, StoreError> {
        match self {
            Store::Sqlite(store) => store.dead_letter(id).await,
        }
    }

    /// Returns the highest campaign version among a campaign's pruned
    /// timeline events: a resume from below it cannot be replayed.
    pub async fn campaign_pruned_version(&self, campaign_pk: i64) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(store) => store.campaign_pruned_version(campaign_pk).await,
        }
    }

    /// Returns the highest pruned event id: a tenant-stream resume from
    /// below it cannot be replayed.
    pub async fn events_pruned_through(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(store) => store.events_pruned_through().await,
        }
    }

    /// Returns row counts.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        match self {
            Store::Sqlite(store) => store.stats().await,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
        }
    }

    /// Returns a campaign's changes after `after_version`, oldest first.
    pub async fn replay_campaign(
        &self,
        campaign_pk: i64,
        after_version: i64,
        limit: u32,
    ) -> Result<Vec<StatusChange>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .replay_campaign(campaign_pk, after_version, limit)
                    .await
            }
        }
    }

    /// Returns the changes after event `after_id` of a tenant's campaigns
    /// (all tenants' for `None`), oldest first.
    pub async fn replay_tenant(
        &self,
        tenant_id: Option<&str>,
        campaigns: Option<&[String]>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<(CampaignInfo, StatusChange)>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                store
                    .replay_tenant(tenant_id, campaigns, after_id, limit)
                    .await
            }
        }
    }

    /// Returns the newest event id, then the counters of a tenant's
    /// campaigns (all tenants' for `None`).
    pub async fn tenant_snapshot(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<(i64, Vec<(i64, CampaignCounters)>), StoreError> {
        match self {
            Store::Sqlite(store) => store.tenant_snapshot(tenant_id, limit).await,
        }
    }

    /// Closes the pools.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(store) => store.close().await,
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with exactly three fractional
/// digits (`2026-11-28T12:00:00.000Z`): fixed width, so these strings sort
/// in time order.
pub fn format_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Returns the current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::format_ms;

    #[test]
    fn timestamps_have_fixed_width_and_sort_in_time_order() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_500), "2023-11-14T22:13:20.500Z");
        let mut texts = [format_ms(1_000), format_ms(999), format_ms(1_500)];
        texts.sort();
        assert_eq!(texts, [format_ms(999), format_ms(1_000), format_ms(1_500)]);
    }
}
