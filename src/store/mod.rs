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
mod commit;
pub mod listing;
mod postgres;
mod settings;
mod sqlite;
mod types;

pub use batch::{
    Applied, Apply, Batch, BatchOutcome, Buffer, DeadLetter, EnsureCampaign, NewMessage, Prune,
    PruneTarget, RecordReplay, Register, RegisterReceipt, Registered, StatusChange, Transaction,
    UpdateOutcome, Weight,
};
pub use postgres::{
    ChangeFeed, ChangePage, FeedOpener, PgStore, SESSION_OPTIONS as PG_SESSION_OPTIONS,
    WRITER_OPTIONS as PG_WRITER_OPTIONS,
};
pub use settings::{Backend, StoreSettings, Synchronous};
pub use sqlite::SqliteStore;
pub use types::{
    CampaignInfo, DeadLetterState, EventPosition, MessageRef, ReceiptVerification, RecentEvent,
    RecentKind, ReplayOutcome, ReplayRecord, StoreError, StoreStats, StoredDeadLetter, StoredEvent,
    StoredMessage,
};

use std::sync::Arc;

use crate::domain::{CampaignCounters, Channel};

/// The store, over whichever backend `DATABASE_URL` selects.
#[derive(Clone, Debug)]
pub enum Store {
    /// Embedded; one process owns the file.
    Sqlite(SqliteStore),
    /// Shared by any number of instances.
    Postgres(PgStore),
}

/// Calls the same method on whichever backend the store is.
macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            Store::Sqlite($backend) => $call,
            Store::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens the database `settings` name, creating an SQLite file if
    /// needed, and runs the migrations.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        match settings.backend() {
            Some(Backend::Sqlite) => Ok(Store::Sqlite(SqliteStore::connect(settings).await?)),
            Some(Backend::Postgres) => Ok(Store::Postgres(PgStore::connect(settings).await?)),
            None => Err(StoreError::UnsupportedUrl(
                "expected sqlite:// or postgres://".to_owned(),
            )),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// Returns what opens a feed of every commit made to the store, by any
    /// instance; `None` for a store one process owns (SQLite), whose DB
    /// actor publishes its commits itself.
    pub fn feed_opener(&self) -> Option<FeedOpener> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(store) => Some(store.feed_opener()),
        }
    }

    /// Hands `batch` over for commit now, in the order of the calls, and
    /// returns what waits for its outcome (see [`Store::commit`]). The DB
    /// actor keeps several SQLite batches out at once: they must reach the
    /// writer in the order it numbered them, not in the order its futures
    /// happen to be polled. PostgreSQL, one batch out at a time, commits
    /// when the future is polled.
    pub fn submit(
        &self,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> impl Future<Output = Result<BatchOutcome, StoreError>> + Send + 'static {
        let queued = match self {
            Store::Sqlite(store) => Some(store.submit(Arc::clone(&batch), now_ms)),
            Store::Postgres(_) => None,
        };
        let store = self.clone();
        async move {
            match queued {
                Some(queued) => queued.await,
                None => store.commit(batch, now_ms).await,
            }
        }
    }

    /// How many batches the DB actor may hand over before the first is
    /// committed. SQLite's writer thread takes them in order and commits
    /// everything that queued while it was busy in one transaction, so the
    /// next commit starts the moment the last one ends, holding all that
    /// arrived meanwhile. PostgreSQL commits one batch at a time (its
    /// commits await the server, and retries must not overtake).
    pub fn commits_in_flight(&self) -> usize {
        match self {
            Store::Sqlite(_) => sqlite::COMMITS_IN_FLIGHT,
            Store::Postgres(_) => 1,
        }
    }

    /// Commits a batch of writes in one transaction and returns their
    /// outcomes, kind by kind, in the batch's order. The batch is shared,
    /// not copied: SQLite commits it on its writer thread, and the caller
    /// keeps it to publish what changed.
    pub async fn commit(&self, batch: Arc<Batch>, now_ms: i64) -> Result<BatchOutcome, StoreError> {
        match self {
            Store::Sqlite(store) => store.commit(batch, now_ms).await,
            Store::Postgres(store) => store.commit(&batch, now_ms).await,
        }
    }

    /// Finds the registered messages among `provider_message_ids`.
    pub async fn resolve(
        &self,
        channel: Channel,
        provider_message_ids: &[&str],
    ) -> Result<Vec<(String, MessageRef)>, StoreError> {
        dispatch!(self, store => store.resolve(channel, provider_message_ids).await)
    }

    /// Returns a campaign's identity and committed counters.
    pub async fn campaign_counters(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<CampaignCounters>, StoreError> {
        dispatch!(self, store => store.campaign_counters(campaign_pk).await)
    }

    /// Finds campaigns named `campaign_id`, in `tenant_id` when given.
    pub async fn find_campaigns(
        &self,
        tenant_id: Option<&str>,
        campaign_id: &str,
    ) -> Result<Vec<CampaignInfo>, StoreError> {
        dispatch!(self, store => store.find_campaigns(tenant_id, campaign_id).await)
    }

    /// Returns a message with its timeline.
    pub async fn message(
        &self,
        channel: Channel,
        provider_message_id: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        dispatch!(self, store => store.message(channel, provider_message_id).await)
    }

    /// Returns the newest stored events (applied and unmatched), newest first.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<RecentEvent>, StoreError> {
        dispatch!(self, store => store.recent_events(limit).await)
    }

    /// Returns the newest dead letters in `state` with ids below `before`,
    /// newest first, bodies cut to `body_limit` bytes.
    pub async fn dead_letters(
        &self,
        state: DeadLetterState,
        limit: u32,
        before: Option<i64>,
        body_limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        dispatch!(self, store => store.dead_letters(state, limit, before, body_limit).await)
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
        dispatch!(self, store => store.dead_letter(id).await)
    }

    /// Returns the highest campaign version among a campaign's pruned
    /// timeline events: a resume from below it cannot be replayed.
    pub async fn campaign_pruned_version(&self, campaign_pk: i64) -> Result<i64, StoreError> {
        dispatch!(self, store => store.campaign_pruned_version(campaign_pk).await)
    }

    /// Returns where event `event_id` is in the order tenant streams follow;
    /// `None` when that cannot be known any more (PostgreSQL: the event was
    /// pruned, or never existed).
    pub async fn event_position(&self, event_id: i64) -> Result<Option<EventPosition>, StoreError> {
        dispatch!(self, store => store.event_position(event_id).await)
    }

    /// Returns the highest pruned event id: a tenant-stream resume from
    /// below it cannot be replayed.
    pub async fn events_pruned_through(&self) -> Result<i64, StoreError> {
        dispatch!(self, store => store.events_pruned_through().await)
    }

    /// Returns row counts.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        dispatch!(self, store => store.stats().await)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, store => store.ping().await)
    }

    /// Returns a campaign's changes after `after_version`, oldest first.
    pub async fn replay_campaign(
        &self,
        campaign_pk: i64,
        after_version: i64,
        limit: u32,
    ) -> Result<Vec<StatusChange>, StoreError> {
        dispatch!(self, store => store.replay_campaign(campaign_pk, after_version, limit).await)
    }

    /// Returns the changes after position `after` of a tenant's campaigns
    /// (all tenants' for `None`), in the tenant streams' order.
    pub async fn replay_tenant(
        &self,
        tenant_id: Option<&str>,
        campaigns: Option<&[String]>,
        after: EventPosition,
        limit: u32,
    ) -> Result<Vec<(CampaignInfo, StatusChange)>, StoreError> {
        dispatch!(self, store => store.replay_tenant(tenant_id, campaigns, after, limit).await)
    }

    /// Returns the position of the last change the counters include, then
    /// the counters of a tenant's campaigns (all tenants' for `None`).
    pub async fn tenant_snapshot(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<(EventPosition, Vec<(i64, CampaignCounters)>), StoreError> {
        dispatch!(self, store => store.tenant_snapshot(tenant_id, limit).await)
    }

    /// Returns a page of campaigns, newest activity first (see
    /// [`listing::ActivityKey`]).
    pub async fn list_campaigns(
        &self,
        query: &listing::CampaignQuery,
    ) -> Result<Vec<listing::ListedCampaign>, StoreError> {
        dispatch!(self, store => store.list_campaigns(query).await)
    }

    /// Returns a page of a campaign's messages in id order and where the
    /// next page starts (see [`listing`] for what one page reads).
    pub async fn message_page(
        &self,
        query: &listing::MessageQuery,
    ) -> Result<listing::MessagePage, StoreError> {
        let wanted = listing::candidates_wanted(query);
        let candidates = dispatch!(self, store => store.message_candidates(query, wanted).await)?;
        let rows = dispatch!(self, store => store.messages_by_ids(query, &candidates).await)?;
        Ok(listing::settle_page(query, wanted, &candidates, rows))
    }

    /// Returns the query plans of a message page and of a campaign list
    /// (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL).
    pub async fn explain_reads(
        &self,
        messages: &listing::MessageQuery,
        campaigns: &listing::CampaignQuery,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, store => store.explain_reads(messages, campaigns).await)
    }

    /// Returns the campaign's first and last minute of funnel activity.
    pub async fn campaign_minute_range(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        dispatch!(self, store => store.campaign_minute_range(campaign_pk).await)
    }

    /// Returns the funnel per bucket of `width` minutes starting in
    /// `[from, to)` (Unix minutes), buckets without activity left out.
    pub async fn campaign_buckets(
        &self,
        campaign_pk: i64,
        width: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, [i64; 5])>, StoreError> {
        dispatch!(self, store => store.campaign_buckets(campaign_pk, width, from, to).await)
    }

    /// Returns the minutes (newest first, at most `limit`) whose funnel
    /// rows moved in commits after the campaign's counters version `after`.
    pub async fn campaign_minutes_changed(
        &self,
        campaign_pk: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        dispatch!(self, store => store.campaign_minutes_changed(campaign_pk, after, limit).await)
    }

    /// Returns the campaign's latency histogram, `(bin, [to_delivered, to_read])`.
    pub async fn campaign_latency(
        &self,
        campaign_pk: i64,
    ) -> Result<Vec<(i64, [i64; 2])>, StoreError> {
        dispatch!(self, store => store.campaign_latency(campaign_pk).await)
    }

    /// Returns the `limit` most frequent failure and complaint reasons and
    /// the messages under the others.
    pub async fn campaign_reasons(
        &self,
        campaign_pk: i64,
        limit: u32,
    ) -> Result<(Vec<(crate::domain::analytics::Reason, i64)>, i64), StoreError> {
        dispatch!(self, store => store.campaign_reasons(campaign_pk, limit).await)
    }

    /// Returns the priced messages, `(category, billable, messages)`.
    pub async fn campaign_pricing(
        &self,
        campaign_pk: i64,
    ) -> Result<Vec<(String, bool, i64)>, StoreError> {
        dispatch!(self, store => store.campaign_pricing(campaign_pk).await)
    }

    /// Closes the pools.
    pub async fn close(&self) {
        dispatch!(self, store => store.close().await)
    }
}
