//! The statements of a commit on SQLite ([`CommitTx`]), each over many rows
//! at once. One connection writes, so [`CommitTx::lock`] has nothing to do
//! and event ids follow commit order.

use std::collections::{HashMap, HashSet};

use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use crate::domain::{Channel, Status, StatusUpdate, Tally};
use crate::store::batch::{
    CounterRow, DeadLetter, EventRow, LoadedMessage, NewMessage, PruneTarget, details_json,
};
use crate::store::commit::{CommitTx, EventIds, OldRow};
use crate::store::types::{MessageRef, StoreError};

use super::rows::{
    ROWS_PER_STATEMENT, buffered_update, counter_row, failure, parse_channel, status_set,
};

/// A commit's transaction on the writer connection.
pub(super) struct SqliteTx<'c>(pub(super) &'c mut SqliteConnection);

/// Pushes `(channel, provider_message_id) IN ((?, ?), …)` rows.
fn push_message_keys<'a>(query: &mut QueryBuilder<'a, Sqlite>, keys: &[(Channel, &'a str)]) {
    let mut list = query.separated(", ");
    for (channel, id) in keys {
        list.push("(");
        list.push_bind_unseparated(channel.as_str());
        list.push_unseparated(", ");
        list.push_bind_unseparated(*id);
        list.push_unseparated(")");
    }
}

/// The table a prune target names (events and dead letters).
fn pruned_table(target: PruneTarget) -> Option<&'static str> {
    match target {
        PruneTarget::Events => Some("status_events"),
        PruneTarget::DeadLetters => Some("dead_letters"),
        // Buffered statuses are pruned by age, not by id; SQLite keeps no
        // outbox (one process owns the store).
        PruneTarget::Unmatched | PruneTarget::Outbox => None,
    }
}

impl CommitTx for SqliteTx<'_> {
    async fn lock(&mut self, _: &[i64], _: &[(Channel, &str)]) -> Result<(), StoreError> {
        // One writer connection: the transaction excludes every other writer.
        Ok(())
    }

    async fn counter_versions(
        &mut self,
        campaigns: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let unique: HashSet<i64> = campaigns.iter().copied().collect();
        let mut versions = HashMap::with_capacity(unique.len());
        if unique.is_empty() {
            return Ok(versions);
        }
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT campaign_pk, version FROM campaign_counters WHERE campaign_pk IN (",
        );
        let mut list = query.separated(", ");
        for campaign_pk in &unique {
            list.push_bind(*campaign_pk);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *self.0).await? {
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
        sqlx::query(
            "INSERT INTO campaign_counters (campaign_pk, updated_at) VALUES (?, ?)
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
        let mut inserted = HashSet::new();
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient,
                                       created_at, updated_at) ",
            );
            query.push_values(chunk, |mut row, message| {
                row.push_bind(campaign_pk)
                    .push_bind(message.channel.as_str())
                    .push_bind(&message.provider_message_id)
                    .push_bind(&message.recipient)
                    .push_bind(now_ms)
                    .push_bind(now_ms);
            });
            query.push(
                " ON CONFLICT (channel, provider_message_id) DO NOTHING
                  RETURNING channel, provider_message_id",
            );
            for row in query.build().fetch_all(&mut *self.0).await? {
                let channel: String = row.try_get("channel")?;
                inserted.insert((
                    parse_channel(&channel)?,
                    row.try_get("provider_message_id")?,
                ));
            }
        }
        Ok(inserted)
    }

    async fn find_messages(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<(Channel, String, MessageRef)>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT id, campaign_pk, channel, provider_message_id FROM messages
                 WHERE (channel, provider_message_id) IN (",
            );
            push_message_keys(&mut query, chunk);
            query.push(")");
            for row in query.build().fetch_all(&mut *self.0).await? {
                let channel: String = row.try_get("channel")?;
                found.push((
                    parse_channel(&channel)?,
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

    async fn take_unmatched(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<StatusUpdate>, StoreError> {
        let mut taken: Vec<(i64, StatusUpdate)> = Vec::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "DELETE FROM unmatched_statuses WHERE (channel, provider_message_id) IN (",
            );
            push_message_keys(&mut query, chunk);
            query.push(") RETURNING id, status_update");
            for row in query.build().fetch_all(&mut *self.0).await? {
                taken.push((row.try_get("id")?, buffered_update(&row)?));
            }
        }
        // Arrival order: the outcome does not depend on it, but the timeline
        // ids then follow arrival.
        taken.sort_by_key(|(id, _)| *id);
        Ok(taken.into_iter().map(|(_, update)| update).collect())
    }

    async fn insert_unmatched(
        &mut self,
        updates: &[&StatusUpdate],
        now_ms: i64,
    ) -> Result<HashSet<String>, StoreError> {
        let mut inserted = HashSet::new();
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk
                .iter()
                .map(|update| {
                    serde_json::to_string(update)
                        .map(|json| (*update, json))
                        .map_err(|error| {
                            StoreError::Corrupt(format!("unserializable update: {error}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO unmatched_statuses (idempotency_key, channel, provider_message_id,
                                                 status_update, received_at) ",
            );
            query.push_values(&rows, |mut row, (update, json)| {
                row.push_bind(&update.idempotency_key)
                    .push_bind(update.channel.as_str())
                    .push_bind(&update.provider_message_id)
                    .push_bind(json)
                    .push_bind(now_ms);
            });
            query.push(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key");
            for row in query.build().fetch_all(&mut *self.0).await? {
                inserted.insert(row.try_get("idempotency_key")?);
            }
        }
        Ok(inserted)
    }

    async fn insert_dead_letter(
        &mut self,
        letter: &DeadLetter,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (channel, reason, content_type, body, received_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(letter.channel.as_str())
        .bind(&letter.reason)
        .bind(&letter.content_type)
        .bind(&letter.body)
        .bind(now_ms)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn delete_unmatched_before(
        &mut self,
        older_than_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM unmatched_statuses WHERE id IN (
                 SELECT id FROM unmatched_statuses WHERE received_at < ?
                 ORDER BY received_at LIMIT ?)",
        )
        .bind(older_than_ms)
        .bind(limit)
        .execute(&mut *self.0)
        .await?
        .rows_affected())
    }

    async fn oldest(&mut self, target: PruneTarget, limit: u32) -> Result<Vec<OldRow>, StoreError> {
        let sql = match target {
            PruneTarget::Events => {
                "SELECT id, received_at, campaign_pk, campaign_version FROM status_events
                 ORDER BY id LIMIT ?"
            }
            PruneTarget::DeadLetters => {
                "SELECT id, received_at, NULL AS campaign_pk, NULL AS campaign_version
                 FROM dead_letters ORDER BY id LIMIT ?"
            }
            PruneTarget::Unmatched | PruneTarget::Outbox => return Ok(Vec::new()),
        };
        let rows = sqlx::query(sql).bind(limit).fetch_all(&mut *self.0).await?;
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
        let Some(table) = pruned_table(target) else {
            return Ok(0);
        };
        let sql = format!("DELETE FROM {table} WHERE id <= ?");
        Ok(sqlx::query(&sql)
            .bind(through)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn raise_pruned_versions(&mut self, versions: &[(i64, i64)]) -> Result<(), StoreError> {
        for (campaign_pk, version) in versions {
            sqlx::query(
                "UPDATE campaign_counters SET pruned_version = MAX(pruned_version, ?)
                 WHERE campaign_pk = ?",
            )
            .bind(version)
            .bind(campaign_pk)
            .execute(&mut *self.0)
            .await?;
        }
        Ok(())
    }

    async fn raise_events_pruned_through(&mut self, through: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO store_marks (name, value) VALUES ('events_pruned_through', ?)
             ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
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
        let mut states = HashMap::with_capacity(message_pks.len());
        for chunk in message_pks.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM messages WHERE id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *self.0).await? {
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

    async fn existing_keys(&mut self, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
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
            for row in query.build().fetch_all(&mut *self.0).await? {
                existing.insert(row.try_get("idempotency_key")?);
            }
        }
        Ok(existing)
    }

    async fn insert_events(
        &mut self,
        events: &[EventRow<'_>],
        now_ms: i64,
    ) -> Result<HashMap<String, EventIds>, StoreError> {
        let mut ids = HashMap::with_capacity(events.len());
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO status_events (idempotency_key, message_pk, campaign_pk, event,
                     status, changed, campaign_version, message_status, provider_ts, details,
                     received_at) ",
            );
            query.push_values(chunk, |mut row, event| {
                row.push_bind(&event.update.idempotency_key)
                    .push_bind(event.message_pk)
                    .push_bind(event.campaign_pk)
                    .push_bind(&event.update.event)
                    .push_bind(event.update.status.map(Status::as_str))
                    .push_bind(event.changed)
                    .push_bind(event.version)
                    .push_bind(event.current.as_str())
                    .push_bind(event.update.timestamp_ms)
                    .push_bind(details_json(event.update))
                    .push_bind(now_ms);
            });
            query.push(" RETURNING id, idempotency_key");
            for row in query.build().fetch_all(&mut *self.0).await? {
                ids.insert(
                    row.try_get("idempotency_key")?,
                    EventIds {
                        event_id: row.try_get("id")?,
                        xact: 0,
                    },
                );
            }
        }
        Ok(ids)
    }

    async fn update_messages(
        &mut self,
        states: &[(i64, &LoadedMessage)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for chunk in states.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE messages SET seen = v.column2, status = v.column3, sent_at = v.column4,
                    delivered_at = v.column5, read_at = v.column6, clicked_at = v.column7,
                    complained_at = v.column8, failed_at = v.column9, error_code = v.column10,
                    error_title = v.column11, updated_at = v.column12
                 FROM (",
            );
            query.push_values(chunk, |mut row, (message_pk, state)| {
                let first = state.set.first_seen_ms();
                row.push_bind(*message_pk)
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
            query.build().execute(&mut *self.0).await?;
        }
        Ok(())
    }

    async fn add_to_counters(
        &mut self,
        campaign_pk: i64,
        delta: &Tally,
        versions: i64,
        now_ms: i64,
    ) -> Result<CounterRow, StoreError> {
        let row = sqlx::query(
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
        .fetch_one(&mut *self.0)
        .await?;
        counter_row(&row)
    }

    async fn counters(&mut self, campaign_pk: i64) -> Result<CounterRow, StoreError> {
        let row = sqlx::query("SELECT * FROM campaign_counters WHERE campaign_pk = ?")
            .bind(campaign_pk)
            .fetch_one(&mut *self.0)
            .await?;
        counter_row(&row)
    }

    async fn campaign_names(
        &mut self,
        campaign_pks: &[i64],
    ) -> Result<HashMap<i64, (String, String)>, StoreError> {
        let mut names = HashMap::with_capacity(campaign_pks.len());
        for chunk in campaign_pks.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT id, tenant_id, campaign_id FROM campaigns WHERE id IN (",
            );
            let mut list = query.separated(", ");
            for campaign_pk in chunk {
                list.push_bind(*campaign_pk);
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *self.0).await? {
                names.insert(
                    row.try_get("id")?,
                    (row.try_get("tenant_id")?, row.try_get("campaign_id")?),
                );
            }
        }
        Ok(names)
    }

    async fn record_changes(&mut self, _: &[&CounterRow]) -> Result<(), StoreError> {
        // One process owns an SQLite store: its DB actor publishes each
        // commit's changes itself.
        Ok(())
    }
}
