//! One group commit, inside its transaction: campaigns, registrations,
//! buffers, dead letters and pruning, then every update applied to the
//! message rows read in the transaction, then counters by deltas.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{QueryBuilder, Row as _, Sqlite, SqliteConnection};

use crate::domain::{CampaignCounters, StatusSet, StatusUpdate, Tally};
use crate::store::batch::{
    Applied, Batch, BatchOutcome, CounterRow, RegisterReceipt, Registered, StatusChange,
    UpdateOutcome, apply_updates,
};
use crate::store::types::StoreError;

use super::rows::counter_row;
use super::writes::{
    buffer, ensure_campaign, existing_keys, insert_events, load_states, prune, register,
    take_unmatched, update_messages,
};

/// Whose outcome one pending update decides.
#[derive(Clone, Copy)]
enum Target {
    /// Update `update` of apply `apply`.
    Apply { apply: usize, update: usize },
    /// A buffered status released by registration `registration`.
    Registration { registration: usize },
}

/// One pending application of an update to a known message.
struct Pending<'a> {
    target: Target,
    message_pk: i64,
    update: &'a StatusUpdate,
}

/// A registration or apply outcome while the commit builds it; the
/// counters are known only at the end.
struct Building<T> {
    campaign_pk: i64,
    result: T,
    changes: Vec<StatusChange>,
}

/// The body of a commit, inside the transaction.
pub(super) async fn commit_in(
    conn: &mut SqliteConnection,
    batch: &Batch,
    now_ms: i64,
) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    let mut deltas: HashMap<i64, (Tally, i64)> = HashMap::new();
    let mut touched: HashSet<i64> = HashSet::new();
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut drained: Vec<(usize, i64, StatusUpdate)> = Vec::new();
    // Each campaign's version as this commit moves it: every registration
    // and every changing event takes the next number, which the event row
    // keeps as the SSE cursor.
    let mut versions = campaign_versions(conn, batch).await?;

    // 1. Campaigns, registrations, buffers, dead letters, pruning.
    for campaign in &batch.campaigns {
        let campaign_pk =
            ensure_campaign(conn, &campaign.tenant_id, &campaign.campaign_id, now_ms).await?;
        outcome.campaigns.push(campaign_pk);
    }
    let mut registrations: Vec<Building<RegisterReceipt>> = Vec::new();
    for (index, registration) in batch.registrations.iter().enumerate() {
        let campaign_pk = registration.campaign_pk;
        let (receipt, registered) =
            register(conn, campaign_pk, &registration.messages, now_ms).await?;
        if receipt.registered > 0 {
            let delta = Tally::transition(None, &StatusSet::EMPTY);
            let entry = deltas.entry(campaign_pk).or_default();
            for _ in 0..receipt.registered {
                entry.0 = entry.0.plus(&delta);
            }
            entry.1 += 1;
            *versions.entry(campaign_pk).or_default() += 1;
        }
        touched.insert(campaign_pk);
        for (message_pk, update) in take_unmatched(conn, &registered).await? {
            drained.push((index, message_pk, update));
        }
        registrations.push(Building {
            campaign_pk,
            result: receipt,
            changes: Vec::new(),
        });
    }
    for buffered in &batch.buffers {
        outcome
            .buffers
            .push(buffer(conn, &buffered.updates, now_ms).await?);
    }
    for letter in &batch.dead_letters {
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
        outcome.dead_letters += 1;
    }
    for each in &batch.prunes {
        let removed = prune(conn, each.target, each.older_than_ms, each.limit).await?;
        outcome.prunes.push(removed);
    }
    let mut applies: Vec<Building<Vec<UpdateOutcome>>> = Vec::new();
    for (apply, write) in batch.applies.iter().enumerate() {
        touched.insert(write.campaign_pk);
        for (update, (message_pk, each)) in write.updates.iter().enumerate() {
            pending.push(Pending {
                target: Target::Apply { apply, update },
                message_pk: *message_pk,
                update: each,
            });
        }
        applies.push(Building {
            campaign_pk: write.campaign_pk,
            result: vec![UpdateOutcome::Duplicate; write.updates.len()],
            changes: Vec::new(),
        });
    }
    for (registration, message_pk, update) in &drained {
        pending.push(Pending {
            target: Target::Registration {
                registration: *registration,
            },
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
            let changes = match each.target {
                Target::Apply { apply, .. } => applies.get_mut(apply).map(|b| &mut b.changes),
                Target::Registration { registration } => {
                    registrations.get_mut(registration).map(|b| &mut b.changes)
                }
            };
            if let Some(changes) = changes {
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
            match each.target {
                Target::Apply { apply, update } => {
                    if let Some(slot) = applies
                        .get_mut(apply)
                        .and_then(|building| building.result.get_mut(update))
                    {
                        *slot = outcome;
                    }
                }
                Target::Registration { registration } => {
                    if let (Some(building), UpdateOutcome::Applied { .. }) =
                        (registrations.get_mut(registration), outcome)
                    {
                        building.result.applied_buffered += 1;
                    }
                }
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
    let counters_of = |campaign_pk: i64| {
        counters.get(&campaign_pk).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!("campaign {campaign_pk} has no counters row"))
        })
    };
    for building in registrations {
        outcome.registrations.push(Registered {
            counters: counters_of(building.campaign_pk)?,
            receipt: building.result,
            changes: building.changes,
        });
    }
    for building in applies {
        outcome.applies.push(Applied {
            counters: counters_of(building.campaign_pk)?,
            outcomes: building.result,
            changes: building.changes,
        });
    }
    Ok(outcome)
}

/// Returns the counters as dashboards see them, with the campaigns' names.
pub(super) async fn with_names(
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
pub(super) async fn campaign_versions(
    conn: &mut SqliteConnection,
    batch: &Batch,
) -> Result<HashMap<i64, i64>, StoreError> {
    let campaigns: HashSet<i64> = batch
        .registrations
        .iter()
        .map(|registration| registration.campaign_pk)
        .chain(batch.applies.iter().map(|apply| apply.campaign_pk))
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
