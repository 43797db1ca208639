//! The SQLite backend: WAL, `synchronous=FULL` by default, one writer
//! connection (the DB actor's) and a small pool of readers.

//!
//! - `mod.rs`: the pools and the reads;
//! - `listing`: campaign lists and message queries;
//! - [`tx`]: the statements a commit is made of (the commit itself is
//!   [`crate::store::commit`], shared by every backend);
//! - [`rows`]: mapping rows to types, and statement sizing.

mod analytics;
mod listing;
mod rows;
mod writer;

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};

use crate::domain::{CampaignCounters, Channel};
use crate::store::batch::{Batch, BatchOutcome, StatusChange};
use crate::store::settings::{StoreSettings, Synchronous};
use crate::store::types::{
    CampaignInfo, DeadLetterState, EventPosition, MessageRef, RecentEvent, RecentKind, StoreError,
    StoreStats, StoredDeadLetter, StoredMessage,
};

use rows::{
    DEAD_LETTER_COLUMNS, ROWS_PER_STATEMENT, buffered_update, channel_of, counter_row,
    current_status_of, failure, status_change, status_of, status_set, stored_dead_letter,
    stored_event,
};
pub(crate) use writer::COMMITS_IN_FLIGHT;
use writer::{MMAP_BYTES, Writer};

/// How long a statement waits for a lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The SQLite store. Cloning is cheap (pools are reference-counted).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection on a thread of its own, used only by
    /// [`SqliteStore::commit`] and the readiness probe: SQLite has one
    /// writer at a time anyway, and a single connection means the DB actor
    /// never waits on a lock held by another connection of ours.
    writer: Writer,
    /// Readers; never used for writes.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs the migrations.
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&settings.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match settings.sqlite_synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // The migrations run on a connection of their own, closed before
        // the writer opens.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&migrator).await?;
        migrator.close().await;
        let cache_kib = i64::from(settings.sqlite_cache_mib.max(1)) * 1024;
        let writer = Writer::open(
            options.get_filename(),
            settings.sqlite_synchronous,
            cache_kib,
            settings.max_commit_rows.max(1),
        )?;
        let reader = SqlitePoolOptions::new()
            .max_connections(settings.read_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(
                options
                    .read_only(true)
                    // A quarter of the writer's cache each; see `writer`.
                    .pragma("cache_size", format!("-{}", cache_kib / 4))
                    .pragma("mmap_size", MMAP_BYTES.to_string()),
            )
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// Closes the readers and the writer.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Commits `batch` in one transaction; see [`super::Store::commit`].
    pub async fn commit(&self, batch: Arc<Batch>, now_ms: i64) -> Result<BatchOutcome, StoreError> {
        self.writer.commit(batch, now_ms).await
    }

    /// Queues `batch` for the writer at once; see [`super::Store::submit`].
    pub fn submit(
        &self,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> impl Future<Output = Result<BatchOutcome, StoreError>> + Send + 'static {
        self.writer.submit(batch, now_ms)
    }

    /// Finds registered messages by provider id.
    pub async fn resolve(
        &self,
        channel: Channel,
        provider_message_ids: &[&str],
    ) -> Result<Vec<(String, MessageRef)>, StoreError> {
        let mut found = Vec::with_capacity(provider_message_ids.len());
        for chunk in provider_message_ids.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT id, campaign_pk, provider_message_id FROM messages WHERE channel = ",
            );
            query.push_bind(channel.as_str());
            query.push(" AND provider_message_id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.reader).await? {
                found.push((
                    row.try_get("provider_message_id")?,
                    MessageRef {
                        message_pk: row.try_get("id")?,
                        campaign_pk: row.try_get("campaign_pk")?,
                    },
                ));
            }
        }
        Ok(found)
    }

    /// Returns a campaign's committed counters.
    pub async fn campaign_counters(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<CampaignCounters>, StoreError> {
        let row = sqlx::query(
            "SELECT c.tenant_id, c.campaign_id, k.* FROM campaigns c
             JOIN campaign_counters k ON k.campaign_pk = c.id WHERE c.id = ?",
        )
        .bind(campaign_pk)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let counters = counter_row(&row)?;
        Ok(Some(counters.named(
            row.try_get("tenant_id")?,
            row.try_get("campaign_id")?,
        )))
    }

    /// Finds campaigns by name, optionally within one tenant.
    pub async fn find_campaigns(
        &self,
        tenant_id: Option<&str>,
        campaign_id: &str,
    ) -> Result<Vec<CampaignInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, campaign_id FROM campaigns
             WHERE campaign_id = ? AND (? IS NULL OR tenant_id = ?) ORDER BY id LIMIT 10",
        )
        .bind(campaign_id)
        .bind(tenant_id)
        .bind(tenant_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(CampaignInfo {
                    campaign_pk: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    campaign_id: row.try_get("campaign_id")?,
                })
            })
            .collect()
    }

    /// Returns a message and its timeline (oldest provider timestamp first).
    pub async fn message(
        &self,
        channel: Channel,
        provider_message_id: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let row = sqlx::query(
            "SELECT m.*, c.tenant_id, c.campaign_id FROM messages m
             JOIN campaigns c ON c.id = m.campaign_pk
             WHERE m.channel = ? AND m.provider_message_id = ?",
        )
        .bind(channel.as_str())
        .bind(provider_message_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let message_pk: i64 = row.try_get("id")?;
        let events = sqlx::query(
            "SELECT id, event, status, changed, provider_ts, received_at, details
             FROM status_events WHERE message_pk = ? ORDER BY provider_ts, id LIMIT 1000",
        )
        .bind(message_pk)
        .fetch_all(&self.reader)
        .await?;
        let timeline = events
            .iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(StoredMessage {
            tenant_id: row.try_get("tenant_id")?,
            campaign_id: row.try_get("campaign_id")?,
            channel: channel_of(&row, "channel")?,
            provider_message_id: row.try_get("provider_message_id")?,
            recipient: row.try_get("recipient")?,
            status: current_status_of(&row, "status")?,
            set: status_set(&row)?,
            failure: failure(&row)?,
            timeline,
        }))
    }

    /// Returns the newest events, applied and unmatched, newest first.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<RecentEvent>, StoreError> {
        let applied = sqlx::query(
            "SELECT e.id, m.channel, m.provider_message_id, c.tenant_id, c.campaign_id,
                    e.event, e.status, e.changed, e.provider_ts, e.received_at
             FROM status_events e
             JOIN messages m ON m.id = e.message_pk
             JOIN campaigns c ON c.id = e.campaign_pk
             ORDER BY e.id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        let unmatched = sqlx::query(
            "SELECT id, channel, provider_message_id, status_update, received_at
             FROM unmatched_statuses ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        let mut events = Vec::with_capacity(applied.len() + unmatched.len());
        for row in &applied {
            events.push(RecentEvent {
                id: row.try_get("id")?,
                kind: RecentKind::Applied,
                channel: channel_of(row, "channel")?,
                provider_message_id: row.try_get("provider_message_id")?,
                tenant_id: row.try_get("tenant_id")?,
                campaign_id: row.try_get("campaign_id")?,
                event: row.try_get("event")?,
                status: status_of(row, "status")?,
                changed: row.try_get("changed")?,
                provider_ts_ms: row.try_get("provider_ts")?,
                received_at_ms: row.try_get("received_at")?,
            });
        }
        for row in &unmatched {
            let update = buffered_update(row)?;
            events.push(RecentEvent {
                id: row.try_get("id")?,
                kind: RecentKind::Unmatched,
                channel: channel_of(row, "channel")?,
                provider_message_id: row.try_get("provider_message_id")?,
                tenant_id: None,
                campaign_id: None,
                event: update.event,
                status: update.status,
                changed: false,
                provider_ts_ms: update.timestamp_ms,
                received_at_ms: row.try_get("received_at")?,
            });
        }
        // Newest first across both tables, by arrival time.
        events.sort_by_key(|event| std::cmp::Reverse((event.received_at_ms, event.id)));
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(events)
    }

    /// Returns the newest dead letters in `state` with ids below `before`
    /// (all when `None`), newest first, each body cut to `body_limit` bytes
    /// in SQL so that a page never loads whole bodies.
    pub async fn dead_letters(
        &self,
        state: DeadLetterState,
        limit: u32,
        before: Option<i64>,
        body_limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let filter = match state {
            DeadLetterState::Open => "AND is_open = 1",
            DeadLetterState::Replayed => "AND is_open = 0",
            DeadLetterState::All => "",
        };
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS}, substr(body, 1, ?) AS body
             FROM dead_letters WHERE id < ? {filter} ORDER BY id DESC LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(body_limit)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(stored_dead_letter).collect()
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS}, body FROM dead_letters WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(stored_dead_letter).transpose()
    }

    /// Returns the highest campaign version among a campaign's pruned
    /// timeline events (0 when none was pruned).
    pub async fn campaign_pruned_version(&self, campaign_pk: i64) -> Result<i64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT pruned_version FROM campaign_counters WHERE campaign_pk = ?",
        )
        .bind(campaign_pk)
        .fetch_optional(&self.reader)
        .await?;
        Ok(version.unwrap_or(0))
    }

    /// Returns where event `event_id` is in the tenant streams' order: on
    /// SQLite event ids follow commit order, so it is the id itself,
    /// whether or not the event is still stored.
    pub async fn event_position(&self, event_id: i64) -> Result<Option<EventPosition>, StoreError> {
        Ok(Some(EventPosition { xact: 0, event_id }))
    }

    /// Returns the highest pruned `status_events.id` (0 when none was pruned).
    pub async fn events_pruned_through(&self) -> Result<i64, StoreError> {
        let through: Option<i64> = sqlx::query_scalar(
            "SELECT value FROM store_marks WHERE name = 'events_pruned_through'",
        )
        .fetch_optional(&self.reader)
        .await?;
        Ok(through.unwrap_or(0))
    }

    /// Returns row counts.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM campaigns) AS campaigns,
                    (SELECT COUNT(*) FROM messages) AS messages,
                    (SELECT COUNT(*) FROM status_events) AS events,
                    (SELECT COUNT(*) FROM unmatched_statuses) AS unmatched,
                    (SELECT COUNT(*) FROM dead_letters) AS dead",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(StoreStats {
            campaigns: row.try_get("campaigns")?,
            messages: row.try_get("messages")?,
            events_stored: row.try_get("events")?,
            unmatched_buffered: row.try_get("unmatched")?,
            dead_letters: row.try_get("dead")?,
        })
    }

    /// Checks that the store answers: reads the last key of every table
    /// (cheap at any size), so a missing or unreadable table fails, which a
    /// bare `SELECT 1` never notices on SQLite.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT (SELECT MAX(id) FROM tenants), (SELECT MAX(id) FROM campaigns),
                    (SELECT MAX(campaign_pk) FROM campaign_counters), (SELECT MAX(id) FROM messages),
                    (SELECT MAX(id) FROM status_events), (SELECT MAX(id) FROM unmatched_statuses),
                    (SELECT MAX(id) FROM dead_letters), (SELECT MAX(name) FROM store_marks)",
        )
        .execute(&self.reader)
        .await?;
        // The write path too: a file that can be read but not written (a
        // full disk, a read-only mount, lost permissions) is not ready. The
        // mark is written in a transaction that is rolled back.
        self.writer.probe().await
    }

    /// Returns the changes of a campaign after `after_version`, oldest first.
    pub async fn replay_campaign(
        &self,
        campaign_pk: i64,
        after_version: i64,
        limit: u32,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.id, e.campaign_pk, e.campaign_version, m.channel, m.provider_message_id,
                    e.event, e.message_status, e.provider_ts
             FROM status_events e JOIN messages m ON m.id = e.message_pk
             WHERE e.campaign_pk = ? AND e.campaign_version > ?
             ORDER BY e.campaign_version LIMIT ?",
        )
        .bind(campaign_pk)
        .bind(after_version)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(status_change).collect()
    }

    /// Returns the changes after `after` in `tenant_id`'s campaigns (every
    /// tenant's when `None`), oldest first, with the campaign of each.
    pub async fn replay_tenant(
        &self,
        tenant_id: Option<&str>,
        campaigns: Option<&[String]>,
        after: EventPosition,
        limit: u32,
    ) -> Result<Vec<(CampaignInfo, StatusChange)>, StoreError> {
        let after_id = after.event_id;
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT e.id, e.campaign_pk, e.campaign_version, m.channel, m.provider_message_id,
                    e.event, e.message_status, e.provider_ts, c.tenant_id, c.campaign_id
             FROM status_events e
             JOIN messages m ON m.id = e.message_pk
             JOIN campaigns c ON c.id = e.campaign_pk
             WHERE e.campaign_version IS NOT NULL AND e.id > ",
        );
        query.push_bind(after_id);
        if let Some(tenant_id) = tenant_id {
            query.push(" AND c.tenant_id = ").push_bind(tenant_id);
        }
        // Filter before LIMIT, so a restricted token's bound counts only
        // what it may see.
        if let Some(campaigns) = campaigns {
            query.push(" AND c.campaign_id IN (");
            let mut list = query.separated(", ");
            list.push_bind("");
            for campaign in campaigns {
                list.push_bind(campaign.as_str());
            }
            query.push(")");
        }
        query.push(" ORDER BY e.id LIMIT ").push_bind(limit);
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter()
            .map(|row| {
                let change = status_change(row)?;
                let campaign = CampaignInfo {
                    campaign_pk: change.campaign_pk,
                    tenant_id: row.try_get("tenant_id")?,
                    campaign_id: row.try_get("campaign_id")?,
                };
                Ok((campaign, change))
            })
            .collect()
    }

    /// Returns the id of the newest event, then the committed counters of
    /// `tenant_id`'s campaigns (every tenant's when `None`), at most `limit`.
    /// The id is read first, so every change after it is in a later event.
    pub async fn tenant_snapshot(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<(EventPosition, Vec<(i64, CampaignCounters)>), StoreError> {
        // Pruning may have emptied the table: the cursor never goes back.
        let last_event_id: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM status_events), 0),
                        COALESCE((SELECT value FROM store_marks
                                  WHERE name = 'events_pruned_through'), 0))",
        )
        .fetch_one(&self.reader)
        .await?;
        let rows = sqlx::query(
            "SELECT c.tenant_id, c.campaign_id, k.* FROM campaigns c
             JOIN campaign_counters k ON k.campaign_pk = c.id
             WHERE (? IS NULL OR c.tenant_id = ?) ORDER BY c.id LIMIT ?",
        )
        .bind(tenant_id)
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        let campaigns = rows
            .iter()
            .map(|row| {
                let counters = counter_row(row)?;
                Ok((
                    counters.campaign_pk,
                    counters.named(row.try_get("tenant_id")?, row.try_get("campaign_id")?),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let position = EventPosition {
            xact: 0,
            event_id: last_event_id,
        };
        Ok((position, campaigns))
    }
}
