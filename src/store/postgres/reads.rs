//! The reads of the PostgreSQL store, on the reader pool.

use sqlx::Row as _;

use crate::domain::{CampaignCounters, Channel};
use crate::store::batch::StatusChange;
use crate::store::types::{
    CampaignInfo, DeadLetterState, EventPosition, MessageRef, RecentEvent, RecentKind, StoreError,
    StoreStats, StoredDeadLetter, StoredMessage,
};

use super::PgStore;
use super::follow::horizon;
use super::rows::{
    DEAD_LETTER_COLUMNS, buffered_update, channel_of, counter_row, current_status_of, failure,
    status_change, status_of, status_set, stored_dead_letter, stored_event,
};

/// The columns a change is read with.
const CHANGE_COLUMNS: &str = "e.id, e.xact, e.campaign_pk, e.campaign_version, m.channel,
    m.provider_message_id, e.event, e.message_status, e.provider_ts";

impl PgStore {
    /// Finds registered messages by provider id.
    pub async fn resolve(
        &self,
        channel: Channel,
        provider_message_ids: &[&str],
    ) -> Result<Vec<(String, MessageRef)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, campaign_pk, provider_message_id FROM messages
             WHERE channel = $1 AND provider_message_id = ANY($2::text[])",
        )
        .bind(channel.as_str())
        .bind(provider_message_ids)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("provider_message_id")?,
                    MessageRef {
                        message_pk: row.try_get("id")?,
                        campaign_pk: row.try_get("campaign_pk")?,
                    },
                ))
            })
            .collect()
    }

    /// Returns a campaign's committed counters.
    pub async fn campaign_counters(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<CampaignCounters>, StoreError> {
        let row = sqlx::query(
            "SELECT c.tenant_id, c.campaign_id, k.* FROM campaigns c
             JOIN campaign_counters k ON k.campaign_pk = c.id WHERE c.id = $1",
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
             WHERE campaign_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
             ORDER BY id LIMIT 10",
        )
        .bind(campaign_id)
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
             WHERE m.channel = $1 AND m.provider_message_id = $2",
        )
        .bind(channel.as_str())
        .bind(provider_message_id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let message_pk: i64 = row.try_get("id")?;
        let events = sqlx::query(
            "SELECT id, event, status, changed, provider_ts, received_at, details
             FROM status_events WHERE message_pk = $1 ORDER BY provider_ts, id LIMIT 1000",
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
             ORDER BY e.id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        let unmatched = sqlx::query(
            "SELECT id, channel, provider_message_id, status_update, received_at
             FROM unmatched_statuses ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
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
        events.sort_by_key(|event| std::cmp::Reverse((event.received_at_ms, event.id)));
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(events)
    }

    /// Returns the newest dead letters in `state` with ids below `before`,
    /// newest first, each body cut to `body_limit` bytes in SQL.
    pub async fn dead_letters(
        &self,
        state: DeadLetterState,
        limit: u32,
        before: Option<i64>,
        body_limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let filter = match state {
            DeadLetterState::Open => "AND is_open",
            DeadLetterState::Replayed => "AND NOT is_open",
            DeadLetterState::All => "",
        };
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS}, substring(body FROM 1 FOR $1) AS body
             FROM dead_letters WHERE id < $2 {filter} ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(i32::try_from(body_limit).unwrap_or(i32::MAX))
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(stored_dead_letter).collect()
    }

    /// Returns one dead letter with its whole body.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS}, body FROM dead_letters WHERE id = $1");
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
            "SELECT pruned_version FROM campaign_counters WHERE campaign_pk = $1",
        )
        .bind(campaign_pk)
        .fetch_optional(&self.reader)
        .await?;
        Ok(version.unwrap_or(0))
    }

    /// Returns where event `event_id` is in the tenant streams' order;
    /// `None` when it is not stored (pruned, or never written). Id 0 is the
    /// position before every event (a snapshot taken before any).
    pub async fn event_position(&self, event_id: i64) -> Result<Option<EventPosition>, StoreError> {
        if event_id == 0 {
            return Ok(Some(EventPosition::default()));
        }
        let xact: Option<i64> = sqlx::query_scalar("SELECT xact FROM status_events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(xact.map(|xact| EventPosition { xact, event_id }))
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

    /// Returns the changes of a campaign after `after_version`, oldest
    /// first. A campaign's versions are taken under its lock, so a reader
    /// that sees a version sees every lower one: no horizon is needed.
    pub async fn replay_campaign(
        &self,
        campaign_pk: i64,
        after_version: i64,
        limit: u32,
    ) -> Result<Vec<StatusChange>, StoreError> {
        let sql = format!(
            "SELECT {CHANGE_COLUMNS}
             FROM status_events e JOIN messages m ON m.id = e.message_pk
             WHERE e.campaign_pk = $1 AND e.campaign_version > $2
             ORDER BY e.campaign_version LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(campaign_pk)
            .bind(after_version)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(status_change).collect()
    }

    /// Returns the changes after `after` in `tenant_id`'s campaigns (every
    /// tenant's when `None`), in the tenant streams' order, with the campaign
    /// of each: only those of transactions below the horizon, so a replay
    /// never skips one that commits later (see [`super::follow`]).
    pub async fn replay_tenant(
        &self,
        tenant_id: Option<&str>,
        campaigns: Option<&[String]>,
        after: EventPosition,
        limit: u32,
    ) -> Result<Vec<(CampaignInfo, StatusChange)>, StoreError> {
        let horizon = horizon(&self.reader).await?;
        let sql = format!(
            "SELECT {CHANGE_COLUMNS}, c.tenant_id, c.campaign_id
             FROM status_events e
             JOIN messages m ON m.id = e.message_pk
             JOIN campaigns c ON c.id = e.campaign_pk
             WHERE e.campaign_version IS NOT NULL AND (e.xact, e.id) > ($1, $2) AND e.xact < $3
               AND ($4::text IS NULL OR c.tenant_id = $4)
               AND ($5::text[] IS NULL OR c.campaign_id = ANY($5))
             ORDER BY e.xact, e.id LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(after.xact)
            .bind(after.event_id)
            .bind(horizon)
            .bind(tenant_id)
            .bind(campaigns)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
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

    /// Returns the position of the last change the counters include, then
    /// the committed counters of `tenant_id`'s campaigns (every tenant's
    /// when `None`), at most `limit`. The position is the last one below
    /// the horizon, read before the counters: every change after it is
    /// followed live.
    pub async fn tenant_snapshot(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<(EventPosition, Vec<(i64, CampaignCounters)>), StoreError> {
        let horizon = horizon(&self.reader).await?;
        let last = sqlx::query(
            "SELECT xact, id FROM status_events
             WHERE campaign_version IS NOT NULL AND xact < $1
             ORDER BY xact DESC, id DESC LIMIT 1",
        )
        .bind(horizon)
        .fetch_optional(&self.reader)
        .await?;
        let position = match last {
            Some(row) => EventPosition {
                xact: row.try_get("xact")?,
                event_id: row.try_get("id")?,
            },
            None => EventPosition::default(),
        };
        let rows = sqlx::query(
            "SELECT c.tenant_id, c.campaign_id, k.* FROM campaigns c
             JOIN campaign_counters k ON k.campaign_pk = c.id
             WHERE ($1::text IS NULL OR c.tenant_id = $1) ORDER BY c.id LIMIT $2",
        )
        .bind(tenant_id)
        .bind(i64::from(limit))
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
        Ok((position, campaigns))
    }
}
