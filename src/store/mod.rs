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
mod types;

pub use batch::{
    Applied, Apply, Batch, BatchOutcome, Buffer, DeadLetter, EnsureCampaign, NewMessage, Prune,
    PruneTarget, Register, RegisterReceipt, Registered, StatusChange, UpdateOutcome, Weight,
};
pub use sqlite::SqliteStore;
pub use types::{
    CampaignInfo, MessageRef, RecentEvent, RecentKind, StoreError, StoreStats, StoredDeadLetter,
    StoredEvent, StoredMessage,
};

use crate::config::SqliteSynchronous;
use crate::domain::{CampaignCounters, Channel};

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
    ) -> Result<Option<StoredMessage>, StoreError> {
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
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        match self {
            Store::Sqlite(store) => store.dead_letters(limit, before, body_limit).await,
        }
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
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
