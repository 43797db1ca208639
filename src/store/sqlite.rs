//! The SQLite backend: WAL, `synchronous=FULL` by default, one writer
//! connection (the DB actor's) and a small pool of readers.

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use super::batch::{
    CounterRow, EventRow, LoadedMessage, OpOutcome, PruneTarget, RegisterReceipt, StatusChange,
    UpdateOutcome, WriteOp, apply_updates,
};
use super::{
    CampaignInfo, DeadLetterView, MessageRef, MessageView, RecentEvent, SeenStatus, StoreError,
    StoreStats, TimelineEvent, format_ms,
};
use crate::config::SqliteSynchronous as Synchronous;
use crate::domain::{
    CampaignCounters, Channel, CurrentStatus, Failure, Status, StatusSet, StatusUpdate, Tally,
};

/// Rows per multi-row statement: keeps every statement far below SQLite's
/// limit of 32,766 bound parameters (the widest row binds 14).
const ROWS_PER_STATEMENT: usize = 500;

/// Connections that serve reads (webhook routing, API, debug page). WAL lets
/// them read while the writer commits.
const READ_CONNECTIONS: u32 = 4;

/// How long a statement waits for a lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite store. Cloning is cheap (pools are reference-counted).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection, used only by [`SqliteStore::commit`]: SQLite has one
    /// writer at a time anyway, and a single connection means the DB actor
    /// never waits on a lock held by another connection of ours.
    writer: SqlitePool,
    /// Readers; never used for writes.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs the migrations.
    pub async fn connect(url: &str, synchronous: Synchronous) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Commits `ops` in one transaction; see [`super::Store::commit`].
    pub async fn commit(
        &self,
        ops: &[&WriteOp],
        now_ms: i64,
    ) -> Result<Vec<OpOutcome>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let outcomes = commit_in(&mut tx, ops, now_ms).await?;
        tx.commit().await?;
        Ok(outcomes)
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
    ) -> Result<Option<MessageView>, StoreError> {
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
        let set = status_set(&row)?;
        let seen = Status::ALL
            .iter()
            .filter(|status| set.contains(**status))
            .map(|status| SeenStatus {
                status: status.as_str().to_owned(),
                first_at: set.first_seen(*status).map(format_ms),
            })
            .collect();
        let events = sqlx::query(
            "SELECT id, event, status, changed, provider_ts, received_at, details
             FROM status_events WHERE message_pk = ? ORDER BY provider_ts, id LIMIT 1000",
        )
        .bind(message_pk)
        .fetch_all(&self.reader)
        .await?;
        let timeline = events
            .iter()
            .map(|event| {
                let details: Option<String> = event.try_get("details")?;
                Ok(TimelineEvent {
                    id: event.try_get("id")?,
                    event: event.try_get("event")?,
                    status: event.try_get("status")?,
                    changed: event.try_get("changed")?,
                    provider_at: format_ms(event.try_get("provider_ts")?),
                    received_at: format_ms(event.try_get("received_at")?),
                    details: details
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(MessageView {
            tenant_id: row.try_get("tenant_id")?,
            campaign_id: row.try_get("campaign_id")?,
            channel: row.try_get("channel")?,
            provider_message_id: row.try_get("provider_message_id")?,
            recipient: row.try_get("recipient")?,
            status: row.try_get("status")?,
            seen,
            error: failure(&row)?,
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
                kind: "applied",
                channel: row.try_get("channel")?,
                provider_message_id: row.try_get("provider_message_id")?,
                tenant_id: row.try_get("tenant_id")?,
                campaign_id: row.try_get("campaign_id")?,
                event: row.try_get("event")?,
                status: row.try_get("status")?,
                changed: row.try_get("changed")?,
                provider_at: format_ms(row.try_get("provider_ts")?),
                received_at: format_ms(row.try_get("received_at")?),
            });
        }
        for row in &unmatched {
            let update = buffered_update(row)?;
            events.push(RecentEvent {
                id: row.try_get("id")?,
                kind: "unmatched",
                channel: row.try_get("channel")?,
                provider_message_id: row.try_get("provider_message_id")?,
                tenant_id: None,
                campaign_id: None,
                event: update.event,
                status: update.status.map(|status| status.as_str().to_owned()),
                changed: false,
                provider_at: format_ms(update.timestamp_ms),
                received_at: format_ms(row.try_get("received_at")?),
            });
        }
        // Newest first across both tables, by arrival time.
        events.sort_by(|a, b| b.received_at.cmp(&a.received_at).then(b.id.cmp(&a.id)));
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(events)
    }

    /// Returns the newest dead letters with ids below `before` (all when
    /// `None`), newest first, each body cut to `body_limit` bytes in SQL so
    /// that a page never loads whole bodies.
    pub async fn dead_letters(
        &self,
        limit: u32,
        before: Option<i64>,
        body_limit: u32,
    ) -> Result<Vec<DeadLetterView>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, channel, reason, content_type, substr(body, 1, ?) AS body,
                    length(body) AS body_bytes, received_at
             FROM dead_letters WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(body_limit)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(dead_letter_view).collect()
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetterView>, StoreError> {
        let row = sqlx::query(
            "SELECT id, channel, reason, content_type, body, length(body) AS body_bytes,
                    received_at
             FROM dead_letters WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(dead_letter_view).transpose()
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

    /// Reads the last key of every table the hub uses: one b-tree descent
    /// each, so cheap at any size, and it fails when the file cannot be read
    /// or the schema is not there. (`SELECT 1` would not: it never touches
    /// the file, so `/readyz` would say ready with no usable store.)
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT (SELECT MAX(id) FROM tenants), (SELECT MAX(id) FROM campaigns),
                    (SELECT MAX(campaign_pk) FROM campaign_counters), (SELECT MAX(id) FROM messages),
                    (SELECT MAX(id) FROM status_events), (SELECT MAX(id) FROM unmatched_statuses),
                    (SELECT MAX(id) FROM dead_letters), (SELECT MAX(name) FROM store_marks)",
        )
        .execute(&self.reader)
        .await?;
        Ok(())
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

    /// Returns the changes after event `after_id` in `tenant_id`'s campaigns
    /// (every tenant's when `None`), oldest first, with the campaign of each.
    pub async fn replay_tenant(
        &self,
        tenant_id: Option<&str>,
        campaigns: Option<&[String]>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<(CampaignInfo, StatusChange)>, StoreError> {
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
    ) -> Result<(i64, Vec<(i64, CampaignCounters)>), StoreError> {
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
        Ok((last_event_id, campaigns))
    }
}

fn dead_letter_view(row: &SqliteRow) -> Result<DeadLetterView, StoreError> {
    let body: Vec<u8> = row.try_get("body")?;
    let body_bytes: i64 = row.try_get("body_bytes")?;
    let shown = i64::try_from(body.len()).unwrap_or(i64::MAX);
    Ok(DeadLetterView {
        id: row.try_get("id")?,
        channel: row.try_get("channel")?,
        reason: row.try_get("reason")?,
        content_type: row.try_get("content_type")?,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_bytes,
        body_truncated: shown < body_bytes,
        received_at: format_ms(row.try_get("received_at")?),
    })
}

fn status_change(row: &SqliteRow) -> Result<StatusChange, StoreError> {
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("message_status")?;
    Ok(StatusChange {
        event_id: row.try_get("id")?,
        campaign_pk: row.try_get("campaign_pk")?,
        version: row.try_get("campaign_version")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown channel {channel}")))?,
        provider_message_id: row.try_get("provider_message_id")?,
        event: row.try_get("event")?,
        status: CurrentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status}")))?,
        provider_ts_ms: row.try_get("provider_ts")?,
    })
}

/// Deletes at most `limit` of the oldest rows of `target` received before
/// `older_than_ms`.
///
/// Timeline events and dead letters are read oldest first by id (ids grow
/// with commits) and the run of old rows at the front is deleted: the cost
/// is the batch, never a scan of the table. What events were pruned is
/// recorded (per campaign, the highest version; store-wide, the highest id)
/// so that resuming streams know what can no longer be replayed.
async fn prune(
    conn: &mut SqliteConnection,
    target: PruneTarget,
    older_than_ms: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    match target {
        PruneTarget::Unmatched => Ok(sqlx::query(
            "DELETE FROM unmatched_statuses WHERE id IN (
                 SELECT id FROM unmatched_statuses WHERE received_at < ?
                 ORDER BY received_at LIMIT ?)",
        )
        .bind(older_than_ms)
        .bind(limit)
        .execute(&mut *conn)
        .await?
        .rows_affected()),
        PruneTarget::DeadLetters => {
            let rows = sqlx::query("SELECT id, received_at FROM dead_letters ORDER BY id LIMIT ?")
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            let Some(through) = old_prefix_end(&rows, older_than_ms)? else {
                return Ok(0);
            };
            Ok(sqlx::query("DELETE FROM dead_letters WHERE id <= ?")
                .bind(through)
                .execute(&mut *conn)
                .await?
                .rows_affected())
        }
        PruneTarget::Events => {
            let rows = sqlx::query(
                "SELECT id, received_at, campaign_pk, campaign_version FROM status_events
                 ORDER BY id LIMIT ?",
            )
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            let Some(through) = old_prefix_end(&rows, older_than_ms)? else {
                return Ok(0);
            };
            let mut pruned_versions: HashMap<i64, i64> = HashMap::new();
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                if id > through {
                    break;
                }
                if let Some(version) = row.try_get::<Option<i64>, _>("campaign_version")? {
                    let campaign_pk: i64 = row.try_get("campaign_pk")?;
                    let entry = pruned_versions.entry(campaign_pk).or_default();
                    *entry = (*entry).max(version);
                }
            }
            let removed = sqlx::query("DELETE FROM status_events WHERE id <= ?")
                .bind(through)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            for (campaign_pk, version) in pruned_versions {
                sqlx::query(
                    "UPDATE campaign_counters SET pruned_version = MAX(pruned_version, ?)
                     WHERE campaign_pk = ?",
                )
                .bind(version)
                .bind(campaign_pk)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO store_marks (name, value) VALUES ('events_pruned_through', ?)
                 ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            )
            .bind(through)
            .execute(&mut *conn)
            .await?;
            Ok(removed)
        }
    }
}

/// Returns the id of the last row of the leading run of `rows` (ordered by
/// id) received before `older_than_ms`, if that run is not empty.
fn old_prefix_end(rows: &[SqliteRow], older_than_ms: i64) -> Result<Option<i64>, StoreError> {
    let mut through = None;
    for row in rows {
        let received_at: i64 = row.try_get("received_at")?;
        if received_at >= older_than_ms {
            break;
        }
        through = Some(row.try_get::<i64, _>("id")?);
    }
    Ok(through)
}

/// One pending application of an update to a known message, with the index
/// of the op (and of the update in it) whose outcome it decides.
struct Pending<'a> {
    op_index: usize,
    update_index: Option<usize>,
    message_pk: i64,
    update: &'a StatusUpdate,
}

/// The body of a commit, inside the transaction.
async fn commit_in(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
    now_ms: i64,
) -> Result<Vec<OpOutcome>, StoreError> {
    let mut outcomes: Vec<Option<OpOutcome>> = vec![None; ops.len()];
    let mut deltas: HashMap<i64, (Tally, i64)> = HashMap::new();
    let mut touched: HashSet<i64> = HashSet::new();
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut drained: Vec<(usize, i64, StatusUpdate)> = Vec::new();
    // Each campaign's version as this commit moves it: every registration
    // and every changing event takes the next number, which the event row
    // keeps as the SSE cursor.
    let mut versions = campaign_versions(conn, ops).await?;

    // 1. Campaigns, registrations, buffers, dead letters, expiry, in op order.
    for (op_index, op) in ops.iter().enumerate() {
        match op {
            WriteOp::EnsureCampaign {
                tenant_id,
                campaign_id,
            } => {
                let campaign_pk = ensure_campaign(conn, tenant_id, campaign_id, now_ms).await?;
                outcomes[op_index] = Some(OpOutcome::Campaign { campaign_pk });
            }
            WriteOp::Register {
                campaign_pk,
                messages,
            } => {
                let (receipt, registered) = register(conn, *campaign_pk, messages, now_ms).await?;
                if receipt.registered > 0 {
                    let delta = Tally::transition(None, &StatusSet::EMPTY);
                    let entry = deltas.entry(*campaign_pk).or_default();
                    for _ in 0..receipt.registered {
                        entry.0 = entry.0.plus(&delta);
                    }
                    entry.1 += 1;
                    *versions.entry(*campaign_pk).or_default() += 1;
                }
                touched.insert(*campaign_pk);
                for (message_pk, update) in take_unmatched(conn, &registered).await? {
                    drained.push((op_index, message_pk, update));
                }
                outcomes[op_index] = Some(OpOutcome::Registered {
                    receipt,
                    counters: None,
                    changes: Vec::new(),
                });
            }
            WriteOp::Buffer { updates } => {
                let results = buffer(conn, updates, now_ms).await?;
                outcomes[op_index] = Some(OpOutcome::Buffered { outcomes: results });
            }
            WriteOp::DeadLetter(letter) => {
                sqlx::query(
                    "INSERT INTO dead_letters (channel, reason, content_type, body, received_at)
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(letter.channel.as_str())
                .bind(&letter.reason)
                .bind(&letter.content_type)
                .bind(&letter.body)
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
                outcomes[op_index] = Some(OpOutcome::DeadLettered);
            }
            WriteOp::Prune {
                target,
                older_than_ms,
                limit,
            } => {
                let removed = prune(conn, *target, *older_than_ms, *limit).await?;
                outcomes[op_index] = Some(OpOutcome::Pruned { removed });
            }
            WriteOp::Apply {
                campaign_pk,
                updates,
            } => {
                touched.insert(*campaign_pk);
                for (update_index, (message_pk, update)) in updates.iter().enumerate() {
                    pending.push(Pending {
                        op_index,
                        update_index: Some(update_index),
                        message_pk: *message_pk,
                        update,
                    });
                }
                outcomes[op_index] = Some(OpOutcome::Applied {
                    outcomes: vec![UpdateOutcome::Duplicate; updates.len()],
                    counters: None,
                    changes: Vec::new(),
                });
            }
        }
    }
    for (op_index, message_pk, update) in &drained {
        pending.push(Pending {
            op_index: *op_index,
            update_index: None,
            message_pk: *message_pk,
            update,
        });
    }

    // 2. Apply every update to the states read here, in order.
    if !pending.is_empty() {
        let message_pks: Vec<i64> = pending.iter().map(|each| each.message_pk).collect();
        let mut states = load_states(conn, &message_pks).await?;
        let keys: Vec<&str> = pending
            .iter()
            .map(|each| each.update.idempotency_key.as_str())
            .collect();
        let existing = existing_keys(conn, &keys).await?;
        let inputs: Vec<(i64, &StatusUpdate)> = pending
            .iter()
            .map(|each| (each.message_pk, each.update))
            .collect();
        let mut applied = apply_updates(&mut states, &inputs, &existing);
        for event in applied.events.iter_mut().filter(|event| event.changed) {
            let version = versions.entry(event.campaign_pk).or_default();
            *version += 1;
            event.version = Some(*version);
        }
        let event_ids = insert_events(conn, &applied.events, now_ms).await?;
        update_messages(conn, &states, now_ms).await?;
        let mut events = applied.events.iter();
        for (each, result) in pending.iter().zip(&applied.results) {
            if result.is_none() {
                continue;
            }
            let Some(event) = events.next() else { break };
            let (Some(version), Some(event_id)) = (
                event.version,
                event_ids.get(event.update.idempotency_key.as_str()),
            ) else {
                continue;
            };
            let change = StatusChange {
                event_id: *event_id,
                campaign_pk: event.campaign_pk,
                version,
                channel: event.update.channel,
                provider_message_id: event.update.provider_message_id.clone(),
                event: event.update.event.clone(),
                status: event.current,
                provider_ts_ms: event.update.timestamp_ms,
            };
            if let Some(
                OpOutcome::Applied { changes, .. } | OpOutcome::Registered { changes, .. },
            ) = &mut outcomes[each.op_index]
            {
                changes.push(change);
            }
        }
        for (campaign_pk, (delta, versions)) in applied.deltas {
            let entry = deltas.entry(campaign_pk).or_default();
            entry.0 = entry.0.plus(&delta);
            entry.1 += versions;
            touched.insert(campaign_pk);
        }
        for (each, result) in pending.iter().zip(&applied.results) {
            let outcome = match result {
                Some(changed) => UpdateOutcome::Applied { changed: *changed },
                None => UpdateOutcome::Duplicate,
            };
            match (&mut outcomes[each.op_index], each.update_index) {
                (Some(OpOutcome::Applied { outcomes, .. }), Some(index)) => {
                    outcomes[index] = outcome
                }
                (Some(OpOutcome::Registered { receipt, .. }), None) => {
                    if matches!(outcome, UpdateOutcome::Applied { .. }) {
                        receipt.applied_buffered += 1;
                    }
                }
                _ => {}
            }
        }
    }

    // 3. Counters: deltas, so concurrent writers (PostgreSQL) stay exact.
    let mut counters: HashMap<i64, CounterRow> = HashMap::new();
    for campaign_pk in touched {
        let (delta, versions) = deltas.remove(&campaign_pk).unwrap_or_default();
        let row = if delta.is_zero() && versions == 0 {
            sqlx::query("SELECT * FROM campaign_counters WHERE campaign_pk = ?")
                .bind(campaign_pk)
                .fetch_one(&mut *conn)
                .await?
        } else {
            sqlx::query(
                "UPDATE campaign_counters SET version = version + ?, total = total + ?,
                    sent = sent + ?, delivered = delivered + ?, read = read + ?,
                    clicked = clicked + ?, complained = complained + ?,
                    now_pending = now_pending + ?, now_sent = now_sent + ?,
                    now_delivered = now_delivered + ?, now_read = now_read + ?,
                    now_failed = now_failed + ?, updated_at = ?
                 WHERE campaign_pk = ? RETURNING *",
            )
            .bind(versions)
            .bind(delta.total)
            .bind(delta.sent)
            .bind(delta.delivered)
            .bind(delta.read)
            .bind(delta.clicked)
            .bind(delta.complained)
            .bind(delta.by_status[0])
            .bind(delta.by_status[1])
            .bind(delta.by_status[2])
            .bind(delta.by_status[3])
            .bind(delta.by_status[4])
            .bind(now_ms)
            .bind(campaign_pk)
            .fetch_one(&mut *conn)
            .await?
        };
        counters.insert(campaign_pk, counter_row(&row)?);
    }
    let counters = with_names(conn, counters).await?;
    for (op, outcome) in ops.iter().zip(outcomes.iter_mut()) {
        match (op, outcome) {
            (
                WriteOp::Register { campaign_pk, .. },
                Some(OpOutcome::Registered { counters: slot, .. }),
            )
            | (
                WriteOp::Apply { campaign_pk, .. },
                Some(OpOutcome::Applied { counters: slot, .. }),
            ) => {
                *slot = counters.get(campaign_pk).cloned();
            }
            _ => {}
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| StoreError::Corrupt("operation without outcome".to_owned()))
        })
        .collect()
}

/// Returns the counters as dashboards see them, with the campaigns' names.
async fn with_names(
    conn: &mut SqliteConnection,
    rows: HashMap<i64, CounterRow>,
) -> Result<HashMap<i64, Arc<CampaignCounters>>, StoreError> {
    let mut named = HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(named);
    }
    let mut query = QueryBuilder::<Sqlite>::new(
        "SELECT id, tenant_id, campaign_id FROM campaigns WHERE id IN (",
    );
    let mut list = query.separated(", ");
    for campaign_pk in rows.keys() {
        list.push_bind(*campaign_pk);
    }
    query.push(")");
    for row in query.build().fetch_all(&mut *conn).await? {
        let campaign_pk: i64 = row.try_get("id")?;
        let Some(counters) = rows.get(&campaign_pk) else {
            continue;
        };
        let tenant_id: String = row.try_get("tenant_id")?;
        let campaign_id: String = row.try_get("campaign_id")?;
        named.insert(
            campaign_pk,
            Arc::new(counters.named(&tenant_id, &campaign_id)),
        );
    }
    Ok(named)
}

/// Reads the counters version of every campaign `ops` write to.
async fn campaign_versions(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
) -> Result<HashMap<i64, i64>, StoreError> {
    let campaigns: HashSet<i64> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Register { campaign_pk, .. } | WriteOp::Apply { campaign_pk, .. } => {
                Some(*campaign_pk)
            }
            _ => None,
        })
        .collect();
    let mut versions = HashMap::with_capacity(campaigns.len());
    if campaigns.is_empty() {
        return Ok(versions);
    }
    let mut query = QueryBuilder::<Sqlite>::new(
        "SELECT campaign_pk, version FROM campaign_counters WHERE campaign_pk IN (",
    );
    let mut list = query.separated(", ");
    for campaign_pk in &campaigns {
        list.push_bind(*campaign_pk);
    }
    query.push(")");
    for row in query.build().fetch_all(&mut *conn).await? {
        versions.insert(row.try_get("campaign_pk")?, row.try_get("version")?);
    }
    Ok(versions)
}

async fn ensure_campaign(
    conn: &mut SqliteConnection,
    tenant_id: &str,
    campaign_id: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    sqlx::query("INSERT INTO tenants (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
        .bind(tenant_id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO campaigns (tenant_id, campaign_id, created_at) VALUES (?, ?, ?)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(campaign_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    let campaign_pk: i64 =
        sqlx::query_scalar("SELECT id FROM campaigns WHERE tenant_id = ? AND campaign_id = ?")
            .bind(tenant_id)
            .bind(campaign_id)
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("INSERT INTO campaign_counters (campaign_pk, updated_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
        .bind(campaign_pk)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    Ok(campaign_pk)
}

/// Inserts new messages; returns the receipt and the messages of this
/// campaign (new or not) whose buffered statuses should be applied.
async fn register(
    conn: &mut SqliteConnection,
    campaign_pk: i64,
    messages: &[super::NewMessage],
    now_ms: i64,
) -> Result<(RegisterReceipt, Vec<(i64, Channel, String)>), StoreError> {
    let mut receipt = RegisterReceipt::default();
    let mut registered = Vec::with_capacity(messages.len());
    let mut seen_in_op: HashSet<(Channel, &str)> = HashSet::new();
    let unique: Vec<&super::NewMessage> = messages
        .iter()
        .filter(|message| {
            seen_in_op.insert((message.channel, message.provider_message_id.as_str()))
        })
        .collect();
    let mut inserted: HashSet<(String, String)> = HashSet::new();
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient, created_at, updated_at) ",
        );
        query.push_values(chunk, |mut row, message| {
            row.push_bind(campaign_pk)
                .push_bind(message.channel.as_str())
                .push_bind(&message.provider_message_id)
                .push_bind(&message.recipient)
                .push_bind(now_ms)
                .push_bind(now_ms);
        });
        query.push(" ON CONFLICT (channel, provider_message_id) DO NOTHING RETURNING channel, provider_message_id");
        for row in query.build().fetch_all(&mut *conn).await? {
            inserted.insert((row.try_get("channel")?, row.try_get("provider_message_id")?));
        }
    }
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT id, campaign_pk, channel, provider_message_id FROM messages WHERE (channel, provider_message_id) IN (",
        );
        let mut list = query.separated(", ");
        for message in chunk {
            list.push("(");
            list.push_bind_unseparated(message.channel.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(&message.provider_message_id);
            list.push_unseparated(")");
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            let channel: String = row.try_get("channel")?;
            let provider_message_id: String = row.try_get("provider_message_id")?;
            let owner: i64 = row.try_get("campaign_pk")?;
            if owner != campaign_pk {
                receipt.conflicts.push(provider_message_id);
                continue;
            }
            if inserted.contains(&(channel.clone(), provider_message_id.clone())) {
                receipt.registered += 1;
            } else {
                receipt.existing += 1;
            }
            let channel = Channel::parse(&channel)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown channel {channel}")))?;
            registered.push((row.try_get("id")?, channel, provider_message_id));
        }
    }
    Ok((receipt, registered))
}

/// Removes and returns the buffered statuses of `messages`.
async fn take_unmatched(
    conn: &mut SqliteConnection,
    messages: &[(i64, Channel, String)],
) -> Result<Vec<(i64, StatusUpdate)>, StoreError> {
    let mut taken = Vec::new();
    for chunk in messages.chunks(ROWS_PER_STATEMENT) {
        let by_key: HashMap<(&str, &str), i64> = chunk
            .iter()
            .map(|(message_pk, channel, id)| ((channel.as_str(), id.as_str()), *message_pk))
            .collect();
        let mut query = QueryBuilder::<Sqlite>::new(
            "DELETE FROM unmatched_statuses WHERE (channel, provider_message_id) IN (",
        );
        let mut list = query.separated(", ");
        for (_, channel, id) in chunk {
            list.push("(");
            list.push_bind_unseparated(channel.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(id);
            list.push_unseparated(")");
        }
        query.push(") RETURNING id, channel, provider_message_id, status_update");
        let mut rows = query.build().fetch_all(&mut *conn).await?;
        // Apply in arrival order; the outcome does not depend on it, but the
        // timeline ids then follow arrival.
        rows.sort_by_key(|row| row.try_get::<i64, _>("id").unwrap_or_default());
        for row in rows {
            let channel: String = row.try_get("channel")?;
            let id: String = row.try_get("provider_message_id")?;
            let Some(message_pk) = by_key.get(&(channel.as_str(), id.as_str())) else {
                continue;
            };
            taken.push((*message_pk, buffered_update(&row)?));
        }
    }
    Ok(taken)
}

/// Buffers updates for unknown messages, unless the message exists by now.
async fn buffer(
    conn: &mut SqliteConnection,
    updates: &[StatusUpdate],
    now_ms: i64,
) -> Result<Vec<UpdateOutcome>, StoreError> {
    let mut results = vec![UpdateOutcome::Duplicate; updates.len()];
    let mut known: HashMap<(String, String), MessageRef> = HashMap::new();
    for chunk in updates.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT id, campaign_pk, channel, provider_message_id FROM messages WHERE (channel, provider_message_id) IN (",
        );
        let mut list = query.separated(", ");
        for update in chunk {
            list.push("(");
            list.push_bind_unseparated(update.channel.as_str());
            list.push_unseparated(", ");
            list.push_bind_unseparated(&update.provider_message_id);
            list.push_unseparated(")");
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            known.insert(
                (row.try_get("channel")?, row.try_get("provider_message_id")?),
                MessageRef {
                    message_pk: row.try_get("id")?,
                    campaign_pk: row.try_get("campaign_pk")?,
                },
            );
        }
    }
    let mut to_insert = Vec::new();
    let mut keys_in_op = HashSet::new();
    for (index, update) in updates.iter().enumerate() {
        let key = (
            update.channel.as_str().to_owned(),
            update.provider_message_id.clone(),
        );
        if let Some(message) = known.get(&key) {
            results[index] = UpdateOutcome::Known(*message);
        } else if keys_in_op.insert(update.idempotency_key.as_str()) {
            let json = serde_json::to_string(update)
                .map_err(|error| StoreError::Corrupt(format!("unserializable update: {error}")))?;
            to_insert.push((index, update, json));
        }
    }
    for chunk in to_insert.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO unmatched_statuses (idempotency_key, channel, provider_message_id, status_update, received_at) ",
        );
        query.push_values(chunk, |mut row, (_, update, json)| {
            row.push_bind(&update.idempotency_key)
                .push_bind(update.channel.as_str())
                .push_bind(&update.provider_message_id)
                .push_bind(json)
                .push_bind(now_ms);
        });
        query.push(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key");
        let inserted: HashSet<String> = query
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get("idempotency_key"))
            .collect::<Result<_, _>>()?;
        for (index, update, _) in chunk {
            if inserted.contains(&update.idempotency_key) {
                results[*index] = UpdateOutcome::Buffered;
            }
        }
    }
    Ok(results)
}

async fn load_states(
    conn: &mut SqliteConnection,
    message_pks: &[i64],
) -> Result<HashMap<i64, LoadedMessage>, StoreError> {
    let unique: Vec<i64> = message_pks
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut states = HashMap::with_capacity(unique.len());
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM messages WHERE id IN (");
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            states.insert(
                row.try_get("id")?,
                LoadedMessage {
                    campaign_pk: row.try_get("campaign_pk")?,
                    set: status_set(&row)?,
                    failure: failure(&row)?,
                    dirty: false,
                },
            );
        }
    }
    Ok(states)
}

async fn existing_keys(
    conn: &mut SqliteConnection,
    keys: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let mut existing = HashSet::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT idempotency_key FROM status_events WHERE idempotency_key IN (",
        );
        let mut list = query.separated(", ");
        for key in chunk {
            list.push_bind(*key);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            existing.insert(row.try_get("idempotency_key")?);
        }
    }
    Ok(existing)
}

/// Inserts event rows; returns their ids by idempotency key.
async fn insert_events<'a>(
    conn: &mut SqliteConnection,
    events: &[EventRow<'a>],
    now_ms: i64,
) -> Result<HashMap<&'a str, i64>, StoreError> {
    let mut ids = HashMap::with_capacity(events.len());
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO status_events (idempotency_key, message_pk, campaign_pk, event, status, changed,
             campaign_version, message_status, provider_ts, details, received_at) ",
        );
        query.push_values(chunk, |mut row, event| {
            let details = if event.update.details.is_null() && event.update.failure.is_none() {
                None
            } else {
                let mut details = event.update.details.clone();
                if let (Some(failure), Some(object)) =
                    (&event.update.failure, details.as_object_mut())
                {
                    object.insert("failure".to_owned(), serde_json::json!(failure));
                } else if let Some(failure) = &event.update.failure {
                    details = serde_json::json!({ "failure": failure });
                }
                Some(details.to_string())
            };
            row.push_bind(&event.update.idempotency_key)
                .push_bind(event.message_pk)
                .push_bind(event.campaign_pk)
                .push_bind(&event.update.event)
                .push_bind(event.update.status.map(Status::as_str))
                .push_bind(event.changed)
                .push_bind(event.version)
                .push_bind(event.current.as_str())
                .push_bind(event.update.timestamp_ms)
                .push_bind(details)
                .push_bind(now_ms);
        });
        query.push(" RETURNING id, idempotency_key");
        let rows = query.build().fetch_all(&mut *conn).await?;
        let by_key: HashMap<String, i64> = rows
            .iter()
            .map(|row| Ok((row.try_get("idempotency_key")?, row.try_get("id")?)))
            .collect::<Result<_, StoreError>>()?;
        for event in chunk {
            let key = event.update.idempotency_key.as_str();
            if let Some(id) = by_key.get(key) {
                ids.insert(key, *id);
            }
        }
    }
    Ok(ids)
}

/// Writes every changed message state with one multi-row `UPDATE … FROM
/// (VALUES …)` per chunk.
async fn update_messages(
    conn: &mut SqliteConnection,
    states: &HashMap<i64, LoadedMessage>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let dirty: Vec<(&i64, &LoadedMessage)> =
        states.iter().filter(|(_, state)| state.dirty).collect();
    for chunk in dirty.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "UPDATE messages SET seen = v.column2, status = v.column3, sent_at = v.column4,
                delivered_at = v.column5, read_at = v.column6, clicked_at = v.column7,
                complained_at = v.column8, failed_at = v.column9, error_code = v.column10,
                error_title = v.column11, updated_at = v.column12
             FROM (",
        );
        query.push_values(chunk, |mut row, (message_pk, state)| {
            let first = state.set.first_seen_ms();
            row.push_bind(**message_pk)
                .push_bind(i64::from(state.set.mask()))
                .push_bind(state.set.current().as_str())
                .push_bind(first[0])
                .push_bind(first[1])
                .push_bind(first[2])
                .push_bind(first[3])
                .push_bind(first[4])
                .push_bind(first[5])
                .push_bind(state.failure.as_ref().map(|failure| failure.code.clone()))
                .push_bind(state.failure.as_ref().map(|failure| failure.title.clone()))
                .push_bind(now_ms);
        });
        query.push(") AS v WHERE messages.id = v.column1");
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

fn mask(seen: i64) -> Result<u8, StoreError> {
    u8::try_from(seen).map_err(|_| StoreError::Corrupt(format!("status mask {seen} out of range")))
}

fn status_set(row: &SqliteRow) -> Result<StatusSet, StoreError> {
    let seen: i64 = row.try_get("seen")?;
    let first = [
        row.try_get("sent_at")?,
        row.try_get("delivered_at")?,
        row.try_get("read_at")?,
        row.try_get("clicked_at")?,
        row.try_get("complained_at")?,
        row.try_get("failed_at")?,
    ];
    Ok(StatusSet::from_parts(mask(seen)?, first))
}

fn failure(row: &SqliteRow) -> Result<Option<Failure>, StoreError> {
    let code: Option<String> = row.try_get("error_code")?;
    let title: Option<String> = row.try_get("error_title")?;
    Ok(code.map(|code| Failure {
        code,
        title: title.unwrap_or_default(),
    }))
}

fn buffered_update(row: &SqliteRow) -> Result<StatusUpdate, StoreError> {
    let json: String = row.try_get("status_update")?;
    serde_json::from_str(&json)
        .map_err(|error| StoreError::Corrupt(format!("buffered update: {error}")))
}

fn counter_row(row: &SqliteRow) -> Result<CounterRow, StoreError> {
    Ok(CounterRow {
        campaign_pk: row.try_get("campaign_pk")?,
        version: row.try_get("version")?,
        tally: Tally {
            total: row.try_get("total")?,
            sent: row.try_get("sent")?,
            delivered: row.try_get("delivered")?,
            read: row.try_get("read")?,
            clicked: row.try_get("clicked")?,
            complained: row.try_get("complained")?,
            by_status: [
                row.try_get("now_pending")?,
                row.try_get("now_sent")?,
                row.try_get("now_delivered")?,
                row.try_get("now_read")?,
                row.try_get("now_failed")?,
            ],
        },
        updated_at_ms: row.try_get("updated_at")?,
    })
}
