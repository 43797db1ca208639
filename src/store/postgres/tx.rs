//! The statements of a commit on PostgreSQL ([`CommitTx`]). Each binds its
//! rows as arrays (`UNNEST`), so its text never changes with the batch size
//! and stays prepared on the connection.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, Row as _};

use crate::domain::analytics::AnalyticsDelta;
use crate::domain::{Channel, Status, StatusUpdate, Tally};
use crate::store::batch::{
    CounterRow, DeadLetter, EventRow, LoadedMessage, NewMessage, PruneTarget, RecordReplay,
};
use crate::store::commit::{CommitTx, EventIds, OldRow};
use crate::store::types::{MessageRef, ReplayOutcome, StoreError};

use super::rows::{
    buffered_update, channel_of, counter_row, failure, parse_channel, pricing, status_set,
};

/// The channel every instance LISTENs on; a commit that changed counters
/// sends one empty notification on it: a wake-up, never the change.
pub(crate) const CHANGES_CHANNEL: &str = "statushub_changes";

/// A commit's transaction.
pub(super) struct PgTx<'c>(pub(super) &'c mut PgConnection);

/// The advisory-lock key of a message id: FNV-1a of `channel:id`, made
/// negative so it never equals a campaign's key (campaign keys are their
/// positive primary keys). The same on every instance and every release.
pub(crate) fn message_lock_key(channel: Channel, provider_message_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in channel
        .as_str()
        .bytes()
        .chain([b':'])
        .chain(provider_message_id.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let positive = i64::try_from(hash >> 1).unwrap_or(i64::MAX);
    -1 - positive
}

/// Splits message keys into the two arrays the statements bind.
fn key_arrays(keys: &[(Channel, &str)]) -> (Vec<&'static str>, Vec<String>) {
    keys.iter()
        .map(|(channel, id)| (channel.as_str(), (*id).to_owned()))
        .unzip()
}

impl CommitTx for PgTx<'_> {
    /// Takes a transaction-scoped advisory lock per campaign and per
    /// message id, all in one statement, in ascending key order: every
    /// commit takes its locks in the same global order, so two commits
    /// cannot deadlock on them. They are the first thing a commit does, so
    /// a commit's transaction id is assigned (at its first write) only once
    /// it holds them: of two commits of one campaign, the one that goes
    /// first has the lower transaction id, and followers reading in
    /// transaction-id order see the campaign's versions in order.
    async fn lock(
        &mut self,
        campaigns: &[i64],
        messages: &[(Channel, &str)],
    ) -> Result<(), StoreError> {
        let mut keys: Vec<i64> = campaigns
            .iter()
            .copied()
            .chain(
                messages
                    .iter()
                    .map(|(channel, id)| message_lock_key(*channel, id)),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k")
            .bind(&keys)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn counter_versions(
        &mut self,
        campaigns: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut versions = HashMap::with_capacity(campaigns.len());
        if campaigns.is_empty() {
            return Ok(versions);
        }
        let rows = sqlx::query(
            "SELECT campaign_pk, version FROM campaign_counters
             WHERE campaign_pk = ANY($1::int8[])",
        )
        .bind(campaigns)
        .fetch_all(&mut *self.0)
        .await?;
        for row in rows {
            versions.insert(row.try_get("campaign_pk")?, row.try_get("version")?);
        }
        Ok(versions)
    }

    async fn ensure_campaign(
        &mut self,
        tenant_id: &str,
        campaign_id: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let conn = &mut *self.0;
        sqlx::query("INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tenant_id)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO campaigns (tenant_id, campaign_id, created_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant_id)
        .bind(campaign_id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        // A new statement: it sees the campaign whether this transaction
        // inserted it or another instance committed it meanwhile.
        let campaign_pk: i64 = sqlx::query_scalar(
            "SELECT id FROM campaigns WHERE tenant_id = $1 AND campaign_id = $2",
        )
        .bind(tenant_id)
        .bind(campaign_id)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO campaign_counters (campaign_pk, updated_at) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(campaign_pk)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(campaign_pk)
    }

    async fn insert_messages(
        &mut self,
        campaign_pk: i64,
        messages: &[&NewMessage],
        now_ms: i64,
    ) -> Result<HashSet<(Channel, String)>, StoreError> {
        let channels: Vec<&str> = messages.iter().map(|m| m.channel.as_str()).collect();
        let ids: Vec<&str> = messages
            .iter()
            .map(|m| m.provider_message_id.as_str())
            .collect();
        let recipients: Vec<Option<&str>> =
            messages.iter().map(|m| m.recipient.as_deref()).collect();
        let rows = sqlx::query(
            "INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient,
                                   created_at, updated_at)
             SELECT $1, c, i, r, $5, $5 FROM UNNEST($2::text[], $3::text[], $4::text[]) AS u(c, i, r)
             ON CONFLICT (channel, provider_message_id) DO NOTHING
             RETURNING channel, provider_message_id",
        )
        .bind(campaign_pk)
        .bind(&channels)
        .bind(&ids)
        .bind(&recipients)
        .bind(now_ms)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|row| {
                let channel: String = row.try_get("channel")?;
                Ok((
                    parse_channel(&channel)?,
                    row.try_get("provider_message_id")?,
                ))
            })
            .collect()
    }

    async fn find_messages(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<(Channel, String, MessageRef)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (channels, ids) = key_arrays(keys);
        let rows = sqlx::query(
            "SELECT m.id, m.campaign_pk, m.channel, m.provider_message_id
             FROM UNNEST($1::text[], $2::text[]) AS k(c, i)
             JOIN messages m ON m.channel = k.c AND m.provider_message_id = k.i",
        )
        .bind(&channels)
        .bind(&ids)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|row| {
                let channel: String = row.try_get("channel")?;
                Ok((
                    parse_channel(&channel)?,
                    row.try_get("provider_message_id")?,
                    MessageRef {
                        message_pk: row.try_get("id")?,
                        campaign_pk: row.try_get("campaign_pk")?,
                    },
                ))
            })
            .collect()
    }

    async fn take_unmatched(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<StatusUpdate>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (channels, ids) = key_arrays(keys);
        let rows = sqlx::query(
            "DELETE FROM unmatched_statuses u USING UNNEST($1::text[], $2::text[]) AS k(c, i)
             WHERE u.channel = k.c AND u.provider_message_id = k.i
             RETURNING u.id, u.status_update",
        )
        .bind(&channels)
        .bind(&ids)
        .fetch_all(&mut *self.0)
        .await?;
        let mut taken = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("id")?, buffered_update(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Arrival order, so the timeline ids follow arrival.
        taken.sort_by_key(|(id, _)| *id);
        Ok(taken.into_iter().map(|(_, update)| update).collect())
    }

    async fn insert_unmatched(
        &mut self,
        updates: &[&StatusUpdate],
        now_ms: i64,
    ) -> Result<HashSet<String>, StoreError> {
        if updates.is_empty() {
            return Ok(HashSet::new());
        }
        let mut keys = Vec::with_capacity(updates.len());
        let mut channels = Vec::with_capacity(updates.len());
        let mut ids = Vec::with_capacity(updates.len());
        let mut json = Vec::with_capacity(updates.len());
        for update in updates {
            keys.push(update.idempotency_key.as_str());
            channels.push(update.channel.as_str());
            ids.push(update.provider_message_id.as_str());
            json.push(
                serde_json::to_string(update).map_err(|error| {
                    StoreError::Corrupt(format!("unserializable update: {error}"))
                })?,
            );
        }
        let rows = sqlx::query(
            "INSERT INTO unmatched_statuses (idempotency_key, channel, provider_message_id,
                                             status_update, received_at)
             SELECT k, c, i, j, $5
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(k, c, i, j)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
        )
        .bind(&keys)
        .bind(&channels)
        .bind(&ids)
        .bind(&json)
        .bind(now_ms)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get("idempotency_key")?))
            .collect()
    }

    async fn insert_dead_letter(
        &mut self,
        letter: &DeadLetter,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (channel, reason, content_type, body, received_at,
                                       verification, verification_detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(letter.channel.as_str())
        .bind(&letter.reason)
        .bind(&letter.content_type)
        .bind(&letter.body)
        .bind(now_ms)
        .bind(letter.verification.method())
        .bind(letter.verification.detail())
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn record_replay(
        &mut self,
        replay: &RecordReplay,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE dead_letters
             SET is_open = $2, replays = replays + 1, replayed_at = $3, replay_outcome = $4,
                 replay_error = $5, replay_received = $6, replay_applied = $7,
                 replay_duplicates = $8, replay_unmatched = $9
             WHERE id = $1",
        )
        .bind(replay.id)
        .bind(replay.outcome != ReplayOutcome::Applied)
        .bind(now_ms)
        .bind(replay.outcome.as_str())
        .bind(&replay.error)
        .bind(replay.received)
        .bind(replay.applied)
        .bind(replay.duplicates)
        .bind(replay.unmatched)
        .execute(&mut *self.0)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn delete_unmatched_before(
        &mut self,
        older_than_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM unmatched_statuses WHERE id IN (
                 SELECT id FROM unmatched_statuses WHERE received_at < $1
                 ORDER BY received_at LIMIT $2)",
        )
        .bind(older_than_ms)
        .bind(i64::from(limit))
        .execute(&mut *self.0)
        .await?
        .rows_affected())
    }

    async fn oldest(&mut self, target: PruneTarget, limit: u32) -> Result<Vec<OldRow>, StoreError> {
        let sql = match target {
            PruneTarget::Events => {
                "SELECT id, received_at, campaign_pk, campaign_version FROM status_events
                 ORDER BY id LIMIT $1"
            }
            PruneTarget::Outbox => {
                "SELECT id, updated_at AS received_at, NULL::int8 AS campaign_pk,
                        NULL::int8 AS campaign_version
                 FROM campaign_changes ORDER BY id LIMIT $1"
            }
            PruneTarget::DeadLetters | PruneTarget::Unmatched => {
                "SELECT id, received_at, NULL::int8 AS campaign_pk,
                        NULL::int8 AS campaign_version
                 FROM dead_letters ORDER BY id LIMIT $1"
            }
        };
        let rows = sqlx::query(sql)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter()
            .map(|row| {
                let campaign_pk: Option<i64> = row.try_get("campaign_pk")?;
                let version: Option<i64> = row.try_get("campaign_version")?;
                Ok(OldRow {
                    id: row.try_get("id")?,
                    received_at_ms: row.try_get("received_at")?,
                    campaign_version: campaign_pk.zip(version),
                })
            })
            .collect()
    }

    async fn delete_through(
        &mut self,
        target: PruneTarget,
        through: i64,
    ) -> Result<u64, StoreError> {
        let sql = match target {
            PruneTarget::Events => "DELETE FROM status_events WHERE id <= $1",
            PruneTarget::Outbox => "DELETE FROM campaign_changes WHERE id <= $1",
            PruneTarget::DeadLetters | PruneTarget::Unmatched => {
                "DELETE FROM dead_letters WHERE id <= $1"
            }
        };
        Ok(sqlx::query(sql)
            .bind(through)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn raise_pruned_versions(&mut self, versions: &[(i64, i64)]) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        let (campaigns, raised): (Vec<i64>, Vec<i64>) = versions.iter().copied().unzip();
        sqlx::query(
            "UPDATE campaign_counters c SET pruned_version = GREATEST(c.pruned_version, v.version)
             FROM UNNEST($1::int8[], $2::int8[]) AS v(campaign_pk, version)
             WHERE c.campaign_pk = v.campaign_pk",
        )
        .bind(&campaigns)
        .bind(&raised)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn raise_events_pruned_through(&mut self, through: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO store_marks (name, value) VALUES ('events_pruned_through', $1)
             ON CONFLICT (name) DO UPDATE
             SET value = GREATEST(store_marks.value, excluded.value)",
        )
        .bind(through)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn load_states(
        &mut self,
        message_pks: &[i64],
    ) -> Result<HashMap<i64, LoadedMessage>, StoreError> {
        let rows = sqlx::query("SELECT * FROM messages WHERE id = ANY($1::int8[])")
            .bind(message_pks)
            .fetch_all(&mut *self.0)
            .await?;
        let mut states = HashMap::with_capacity(rows.len());
        for row in &rows {
            states.insert(
                row.try_get("id")?,
                LoadedMessage {
                    campaign_pk: row.try_get("campaign_pk")?,
                    channel: channel_of(row, "channel")?,
                    set: status_set(row)?,
                    failure: failure(row)?,
                    complaint_type: row.try_get("complaint_type")?,
                    pricing: pricing(row)?,
                    counted: row
                        .try_get::<Option<bool>, _>("before_analytics")?
                        .is_none(),
                    dirty: false,
                },
            );
        }
        Ok(states)
    }

    async fn existing_keys(&mut self, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT idempotency_key FROM status_events WHERE idempotency_key = ANY($1::text[])",
        )
        .bind(keys)
        .fetch_all(&mut *self.0)
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get("idempotency_key")?))
            .collect()
    }

    async fn insert_events(
        &mut self,
        events: &[EventRow<'_>],
        now_ms: i64,
    ) -> Result<HashMap<String, EventIds>, StoreError> {
        if events.is_empty() {
            return Ok(HashMap::new());
        }
        let n = events.len();
        let mut keys = Vec::with_capacity(n);
        let mut message_pks = Vec::with_capacity(n);
        let mut campaign_pks = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut statuses: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut changed = Vec::with_capacity(n);
        let mut versions: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut currents = Vec::with_capacity(n);
        let mut provider_ts = Vec::with_capacity(n);
        let mut details: Vec<Option<&str>> = Vec::with_capacity(n);
        for event in events {
            keys.push(event.update.idempotency_key.as_str());
            message_pks.push(event.message_pk);
            campaign_pks.push(event.campaign_pk);
            names.push(event.update.event.as_str());
            statuses.push(event.update.status.map(Status::as_str));
            changed.push(event.changed);
            versions.push(event.version);
            currents.push(event.current.as_str());
            provider_ts.push(event.update.timestamp_ms);
            details.push(event.update.stored_details());
        }
        // WITH ORDINALITY + ORDER BY: ids are drawn in the batch's order,
        // so a campaign's versions rise with its event ids.
        let rows = sqlx::query(
            "INSERT INTO status_events (idempotency_key, message_pk, campaign_pk, event, status,
                 changed, campaign_version, message_status, provider_ts, details, received_at)
             SELECT k, m, c, e, s, ch, v, cur, ts, d, $11
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                         $6::bool[], $7::int8[], $8::text[], $9::int8[], $10::text[])
                  WITH ORDINALITY AS u(k, m, c, e, s, ch, v, cur, ts, d, n)
             ORDER BY n
             RETURNING id, xact, idempotency_key",
        )
        .bind(&keys)
        .bind(&message_pks)
        .bind(&campaign_pks)
        .bind(&names)
        .bind(&statuses)
        .bind(&changed)
        .bind(&versions)
        .bind(&currents)
        .bind(&provider_ts)
        .bind(&details)
        .bind(now_ms)
        .fetch_all(&mut *self.0)
        .await?;
        let mut ids = HashMap::with_capacity(rows.len());
        for row in rows {
            ids.insert(
                row.try_get("idempotency_key")?,
                EventIds {
                    event_id: row.try_get("id")?,
                    xact: row.try_get("xact")?,
                },
            );
        }
        Ok(ids)
    }

    async fn update_messages(
        &mut self,
        states: &[(i64, &LoadedMessage)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let n = states.len();
        let mut ids = Vec::with_capacity(n);
        let mut seen = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut firsts: [Vec<Option<i64>>; 6] = Default::default();
        let mut codes: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut titles: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut complaints: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut categories: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut billables: Vec<Option<bool>> = Vec::with_capacity(n);
        let mut priced_at: Vec<Option<i64>> = Vec::with_capacity(n);
        for (message_pk, state) in states {
            complaints.push(state.complaint_type.as_deref());
            categories.push(state.pricing.as_ref().map(|p| p.category.as_str()));
            billables.push(state.pricing.as_ref().map(|p| p.billable));
            priced_at.push(state.pricing.as_ref().map(|p| p.at_ms));
            ids.push(*message_pk);
            seen.push(i64::from(state.set.mask()));
            status.push(state.set.current().as_str());
            for (column, first) in firsts.iter_mut().zip(state.set.first_seen_ms()) {
                column.push(first);
            }
            codes.push(state.failure.as_ref().map(|f| f.code.as_str()));
            titles.push(state.failure.as_ref().map(|f| f.title.as_str()));
        }
        let [sent, delivered, read, clicked, complained, failed] = &firsts;
        sqlx::query(
            "UPDATE messages m SET seen = v.seen, status = v.status, sent_at = v.sent,
                 delivered_at = v.delivered, read_at = v.read, clicked_at = v.clicked,
                 complained_at = v.complained, failed_at = v.failed, error_code = v.code,
                 error_title = v.title, updated_at = $12, complaint_type = v.complaint,
                 pricing_category = v.category, pricing_billable = v.billable,
                 pricing_at = v.priced_at
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                         $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::text[],
                         $13::text[], $14::text[], $15::bool[], $16::int8[])
                  AS v(id, seen, status, sent, delivered, read, clicked, complained, failed,
                       code, title, complaint, category, billable, priced_at)
             WHERE m.id = v.id",
        )
        .bind(&ids)
        .bind(&seen)
        .bind(&status)
        .bind(sent)
        .bind(delivered)
        .bind(read)
        .bind(clicked)
        .bind(complained)
        .bind(failed)
        .bind(&codes)
        .bind(&titles)
        .bind(now_ms)
        .bind(&complaints)
        .bind(&categories)
        .bind(&billables)
        .bind(&priced_at)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn add_to_counters(
        &mut self,
        campaign_pk: i64,
        delta: &Tally,
        versions: i64,
        now_ms: i64,
    ) -> Result<CounterRow, StoreError> {
        self.add_to_counters_many(&[(campaign_pk, *delta, versions)], now_ms)
            .await?
            .pop()
            .ok_or_else(|| {
                StoreError::Corrupt(format!("campaign {campaign_pk} has no counters row"))
            })
    }

    /// One statement for every campaign of the commit (a round trip each
    /// would cost a commit touching many campaigns a round trip per
    /// campaign). The campaigns' rows are already locked, in key order
    /// (see [`CommitTx::lock`]).
    async fn add_to_counters_many(
        &mut self,
        changes: &[(i64, Tally, i64)],
        now_ms: i64,
    ) -> Result<Vec<CounterRow>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let column = |pick: &dyn Fn(&(i64, Tally, i64)) -> i64| -> Vec<i64> {
            changes.iter().map(pick).collect()
        };
        let rows = sqlx::query(
            "UPDATE campaign_counters AS c SET version = c.version + d.versions,
                 total = c.total + d.total, sent = c.sent + d.sent,
                 delivered = c.delivered + d.delivered, read = c.read + d.read,
                 clicked = c.clicked + d.clicked, complained = c.complained + d.complained,
                 now_pending = c.now_pending + d.p0, now_sent = c.now_sent + d.p1,
                 now_delivered = c.now_delivered + d.p2, now_read = c.now_read + d.p3,
                 now_failed = c.now_failed + d.p4, updated_at = GREATEST(c.updated_at, $14)
             FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                         $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                         $11::int8[], $12::int8[], $13::int8[])
                  AS d(campaign_pk, versions, total, sent, delivered, read, clicked,
                       complained, p0, p1, p2, p3, p4)
             WHERE c.campaign_pk = d.campaign_pk
             RETURNING c.*",
        )
        .bind(column(&|change| change.0))
        .bind(column(&|change| change.2))
        .bind(column(&|change| change.1.total))
        .bind(column(&|change| change.1.sent))
        .bind(column(&|change| change.1.delivered))
        .bind(column(&|change| change.1.read))
        .bind(column(&|change| change.1.clicked))
        .bind(column(&|change| change.1.complained))
        .bind(column(&|change| change.1.by_status[0]))
        .bind(column(&|change| change.1.by_status[1]))
        .bind(column(&|change| change.1.by_status[2]))
        .bind(column(&|change| change.1.by_status[3]))
        .bind(column(&|change| change.1.by_status[4]))
        .bind(now_ms)
        .fetch_all(&mut *self.0)
        .await?;
        let mut by_campaign: HashMap<i64, CounterRow> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let counters = counter_row(row)?;
            by_campaign.insert(counters.campaign_pk, counters);
        }
        changes
            .iter()
            .map(|(campaign_pk, ..)| {
                by_campaign.remove(campaign_pk).ok_or_else(|| {
                    StoreError::Corrupt(format!("campaign {campaign_pk} has no counters row"))
                })
            })
            .collect()
    }

    async fn counters(&mut self, campaign_pk: i64) -> Result<CounterRow, StoreError> {
        let row = sqlx::query("SELECT * FROM campaign_counters WHERE campaign_pk = $1")
            .bind(campaign_pk)
            .fetch_one(&mut *self.0)
            .await?;
        counter_row(&row)
    }

    async fn campaign_names(
        &mut self,
        campaign_pks: &[i64],
    ) -> Result<HashMap<i64, (String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, campaign_id FROM campaigns WHERE id = ANY($1::int8[])",
        )
        .bind(campaign_pks)
        .fetch_all(&mut *self.0)
        .await?;
        let mut names = HashMap::with_capacity(rows.len());
        for row in rows {
            names.insert(
                row.try_get("id")?,
                (row.try_get("tenant_id")?, row.try_get("campaign_id")?),
            );
        }
        Ok(names)
    }

    /// Writes the outbox rows and one wake-up for every instance. The
    /// notification is delivered at commit, and only if the commit
    /// succeeds.
    async fn add_analytics(
        &mut self,
        campaign_pk: i64,
        delta: &AnalyticsDelta,
        version: i64,
    ) -> Result<(), StoreError> {
        self.add_analytics_many(&[(campaign_pk, delta, version)])
            .await
    }

    /// One upsert per table for every campaign of the commit (not per
    /// campaign: a commit spread over many campaigns would pay a round trip
    /// per campaign and table). Within a statement each `(campaign, key)`
    /// appears once: keys are unique per campaign, campaigns per commit.
    async fn add_analytics_many(
        &mut self,
        deltas: &[(i64, &AnalyticsDelta, i64)],
    ) -> Result<(), StoreError> {
        let (mut campaigns, mut minutes, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        let mut stages: [Vec<i64>; 5] = Default::default();
        for (campaign_pk, delta, version) in deltas {
            for (minute, counts) in &delta.minutes {
                campaigns.push(*campaign_pk);
                minutes.push(*minute);
                versions.push(*version);
                for (column, count) in stages.iter_mut().zip(counts) {
                    column.push(*count);
                }
            }
        }
        if !minutes.is_empty() {
            let [sent, delivered, read, clicked, failed] = &stages;
            sqlx::query(
                "INSERT INTO campaign_minutes AS t (campaign_pk, minute, sent, delivered, read,
                     clicked, failed, version)
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[],
                                      $5::int8[], $6::int8[], $7::int8[], $8::int8[])
                 ON CONFLICT (campaign_pk, minute) DO UPDATE SET
                     sent = t.sent + excluded.sent, delivered = t.delivered + excluded.delivered,
                     read = t.read + excluded.read, clicked = t.clicked + excluded.clicked,
                     failed = t.failed + excluded.failed, version = excluded.version",
            )
            .bind(&campaigns)
            .bind(&minutes)
            .bind(sent)
            .bind(delivered)
            .bind(read)
            .bind(clicked)
            .bind(failed)
            .bind(&versions)
            .execute(&mut *self.0)
            .await?;
        }
        let (mut campaigns, mut bins, mut to_delivered, mut to_read) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (campaign_pk, delta, _) in deltas {
            for (bin, [delivered, read]) in &delta.latency {
                campaigns.push(*campaign_pk);
                bins.push(*bin);
                to_delivered.push(*delivered);
                to_read.push(*read);
            }
        }
        if !bins.is_empty() {
            sqlx::query(
                "INSERT INTO campaign_latency AS t (campaign_pk, bin, to_delivered, to_read)
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[])
                 ON CONFLICT (campaign_pk, bin) DO UPDATE SET
                     to_delivered = t.to_delivered + excluded.to_delivered,
                     to_read = t.to_read + excluded.to_read",
            )
            .bind(&campaigns)
            .bind(&bins)
            .bind(&to_delivered)
            .bind(&to_read)
            .execute(&mut *self.0)
            .await?;
        }
        let (mut campaigns, mut kinds, mut codes, mut titles, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (campaign_pk, delta, _) in deltas {
            for (reason, count) in &delta.reasons {
                campaigns.push(*campaign_pk);
                kinds.push(reason.kind.as_str());
                codes.push(reason.code.as_str());
                titles.push(reason.title.as_str());
                counts.push(*count);
            }
        }
        if !kinds.is_empty() {
            sqlx::query(
                "INSERT INTO campaign_reasons AS t (campaign_pk, kind, code, title, messages)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])
                 ON CONFLICT (campaign_pk, kind, code, title) DO UPDATE SET
                     messages = t.messages + excluded.messages",
            )
            .bind(&campaigns)
            .bind(&kinds)
            .bind(&codes)
            .bind(&titles)
            .bind(&counts)
            .execute(&mut *self.0)
            .await?;
        }
        let (mut campaigns, mut categories, mut billables, mut counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (campaign_pk, delta, _) in deltas {
            for ((category, billable), count) in &delta.pricing {
                campaigns.push(*campaign_pk);
                categories.push(category.as_str());
                billables.push(*billable);
                counts.push(*count);
            }
        }
        if !categories.is_empty() {
            sqlx::query(
                "INSERT INTO campaign_pricing AS t (campaign_pk, category, billable, messages)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::bool[], $4::int8[])
                 ON CONFLICT (campaign_pk, category, billable) DO UPDATE SET
                     messages = t.messages + excluded.messages",
            )
            .bind(&campaigns)
            .bind(&categories)
            .bind(&billables)
            .bind(&counts)
            .execute(&mut *self.0)
            .await?;
        }
        Ok(())
    }

    async fn record_changes(&mut self, changed: &[&CounterRow]) -> Result<(), StoreError> {
        let mut columns: [Vec<i64>; 14] = Default::default();
        for row in changed {
            let tally = &row.tally;
            let values = [
                row.campaign_pk,
                row.version,
                tally.total,
                tally.sent,
                tally.delivered,
                tally.read,
                tally.clicked,
                tally.complained,
                tally.by_status[0],
                tally.by_status[1],
                tally.by_status[2],
                tally.by_status[3],
                tally.by_status[4],
                row.updated_at_ms,
            ];
            for (column, value) in columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let mut query = sqlx::query(
            "WITH recorded AS (
                 INSERT INTO campaign_changes (campaign_pk, version, total, sent, delivered, read,
                     clicked, complained, now_pending, now_sent, now_delivered, now_read,
                     now_failed, updated_at)
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                     $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[],
                     $12::int8[], $13::int8[], $14::int8[])
             )
             SELECT pg_notify($15, '')",
        );
        for column in &columns {
            query = query.bind(column);
        }
        query.bind(CHANGES_CHANNEL).execute(&mut *self.0).await?;
        Ok(())
    }
}
