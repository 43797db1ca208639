//! The statements a commit is made of, each over many rows at once.

use std::collections::{HashMap, HashSet};

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use crate::domain::{Channel, Status, StatusUpdate};
use crate::store::batch::{
    EventRow, LoadedMessage, NewMessage, PruneTarget, RegisterReceipt, UpdateOutcome,
};
use crate::store::types::{MessageRef, StoreError};

use super::rows::{ROWS_PER_STATEMENT, buffered_update, failure, status_set};

/// Deletes at most `limit` of the oldest rows of `target` received before
/// `older_than_ms`.
///
/// Timeline events and dead letters are read oldest first by id (ids grow
/// with commits) and the run of old rows at the front is deleted: the cost
/// is the batch, never a scan of the table. What events were pruned is
/// recorded (per campaign, the highest version; store-wide, the highest id)
/// so that resuming streams know what can no longer be replayed.
pub(super) async fn prune(
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
pub(super) fn old_prefix_end(
    rows: &[SqliteRow],
    older_than_ms: i64,
) -> Result<Option<i64>, StoreError> {
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

pub(super) async fn ensure_campaign(
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
pub(super) async fn register(
    conn: &mut SqliteConnection,
    campaign_pk: i64,
    messages: &[NewMessage],
    now_ms: i64,
) -> Result<(RegisterReceipt, Vec<(i64, Channel, String)>), StoreError> {
    let mut receipt = RegisterReceipt::default();
    let mut registered = Vec::with_capacity(messages.len());
    let mut seen_in_op: HashSet<(Channel, &str)> = HashSet::new();
    let unique: Vec<&NewMessage> = messages
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
pub(super) async fn take_unmatched(
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
pub(super) async fn buffer(
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

pub(super) async fn load_states(
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

pub(super) async fn existing_keys(
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
pub(super) async fn insert_events<'a>(
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
pub(super) async fn update_messages(
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
