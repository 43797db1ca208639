//! One group commit, written once for every backend.
//!
//! [`commit_in`] is the whole orchestration of a [`Batch`] inside its
//! transaction: locks, campaigns, registrations (with the buffered statuses
//! they release), buffers, dead letters, pruning, then every update applied
//! through the status algebra to the message rows read *in* the
//! transaction, then counters by deltas and the change record. A backend
//! implements [`CommitTx`], a small set of statements over many rows each,
//! and nothing else: `sqlite/` and `postgres/` hold only SQL and row
//! mapping.
//!
//! # Concurrency
//!
//! On SQLite there is one writer, so nothing below races. On PostgreSQL
//! several instances commit at once; [`CommitTx::lock`] runs first and takes,
//! in one fixed key order, a lock per campaign the batch changes and per
//! message id it registers or buffers. So two commits that touch one
//! campaign or one message id run one after the other (and cannot deadlock
//! on those locks), every state read below is the committed one, and a
//! registration on one instance cannot miss a status buffered on another.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::domain::analytics::AnalyticsDelta;
use crate::domain::{CampaignCounters, Channel, StatusSet, StatusUpdate, Tally};

use super::batch::{
    Applied, Apply, Batch, BatchOutcome, Buffer, CounterRow, DeadLetter, EnsureCampaign, EventRow,
    LoadedMessage, NewMessage, Prune, PruneTarget, RecordReplay, Register, RegisterReceipt,
    Registered, StatusChange, UpdateOutcome, apply_updates,
};
use super::types::{MessageRef, StoreError};

/// A row at the old end of a pruned table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OldRow {
    pub id: i64,
    pub received_at_ms: i64,
    /// For timeline events that changed their message: the campaign and
    /// the version the change produced.
    pub campaign_version: Option<(i64, i64)>,
}

/// Where an inserted event row is, in commit order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EventIds {
    pub event_id: i64,
    /// The commit-order key of the inserting transaction (PostgreSQL's
    /// transaction id; 0 on SQLite, whose event ids follow commit order).
    pub xact: i64,
}

/// The statements a commit is made of. Each works on many rows at once;
/// none decides anything: the decisions are in [`commit_in`] and in the
/// pure [`apply_updates`].
pub(crate) trait CommitTx {
    /// Takes the locks the batch needs before it writes anything (see the
    /// module docs); `campaigns` and `messages` may hold duplicates.
    async fn lock(
        &mut self,
        campaigns: &[i64],
        messages: &[(Channel, &str)],
    ) -> Result<(), StoreError>;

    /// Returns the counters version of each of `campaigns`.
    async fn counter_versions(
        &mut self,
        campaigns: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError>;

    /// Creates the tenant, the campaign and its zeroed counters if needed;
    /// returns the campaign's key.
    async fn ensure_campaign(
        &mut self,
        tenant_id: &str,
        campaign_id: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError>;

    /// Inserts the messages that do not exist yet (in any campaign);
    /// returns the keys it inserted.
    async fn insert_messages(
        &mut self,
        campaign_pk: i64,
        messages: &[&NewMessage],
        now_ms: i64,
    ) -> Result<HashSet<(Channel, String)>, StoreError>;

    /// Finds registered messages by key.
    async fn find_messages(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<(Channel, String, MessageRef)>, StoreError>;

    /// Deletes and returns the buffered updates of these message keys, in
    /// arrival order.
    async fn take_unmatched(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<StatusUpdate>, StoreError>;

    /// Buffers updates, passing over idempotency keys already buffered;
    /// returns the keys it inserted.
    async fn insert_unmatched(
        &mut self,
        updates: &[&StatusUpdate],
        now_ms: i64,
    ) -> Result<HashSet<String>, StoreError>;

    async fn insert_dead_letter(
        &mut self,
        letter: &DeadLetter,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Records a dead letter's replay outcome (closing it when applied);
    /// returns whether the letter exists.
    async fn record_replay(
        &mut self,
        replay: &RecordReplay,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes at most `limit` of the oldest buffered updates received
    /// before `older_than_ms`.
    async fn delete_unmatched_before(
        &mut self,
        older_than_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Returns the `limit` rows of `target` with the lowest ids
    /// ([`PruneTarget::Events`] or [`PruneTarget::DeadLetters`]).
    async fn oldest(&mut self, target: PruneTarget, limit: u32) -> Result<Vec<OldRow>, StoreError>;

    /// Deletes the rows of `target` with ids up to `through`.
    async fn delete_through(
        &mut self,
        target: PruneTarget,
        through: i64,
    ) -> Result<u64, StoreError>;

    /// Raises each campaign's pruned version to at least the one given.
    async fn raise_pruned_versions(&mut self, versions: &[(i64, i64)]) -> Result<(), StoreError>;

    /// Raises the store-wide mark of the highest pruned event id.
    async fn raise_events_pruned_through(&mut self, through: i64) -> Result<(), StoreError>;

    /// Reads the states of these messages.
    async fn load_states(
        &mut self,
        message_pks: &[i64],
    ) -> Result<HashMap<i64, LoadedMessage>, StoreError>;

    /// Returns which of `keys` are recorded in the timeline.
    async fn existing_keys(&mut self, keys: &[&str]) -> Result<HashSet<String>, StoreError>;

    /// Inserts timeline events; returns where each went, by idempotency key.
    async fn insert_events(
        &mut self,
        events: &[EventRow<'_>],
        now_ms: i64,
    ) -> Result<HashMap<String, EventIds>, StoreError>;

    /// Writes changed message states.
    async fn update_messages(
        &mut self,
        states: &[(i64, &LoadedMessage)],
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Adds a delta to a campaign's counters and raises its version by
    /// `versions`; returns the row after.
    async fn add_to_counters(
        &mut self,
        campaign_pk: i64,
        delta: &Tally,
        versions: i64,
        now_ms: i64,
    ) -> Result<CounterRow, StoreError>;

    /// [`CommitTx::add_to_counters`] of several campaigns, in the order
    /// given; a backend whose statements cost a round trip each makes it
    /// one statement.
    async fn add_to_counters_many(
        &mut self,
        changes: &[(i64, Tally, i64)],
        now_ms: i64,
    ) -> Result<Vec<CounterRow>, StoreError> {
        let mut rows = Vec::with_capacity(changes.len());
        for (campaign_pk, delta, versions) in changes {
            rows.push(
                self.add_to_counters(*campaign_pk, delta, *versions, now_ms)
                    .await?,
            );
        }
        Ok(rows)
    }

    /// Reads a campaign's counters.
    async fn counters(&mut self, campaign_pk: i64) -> Result<CounterRow, StoreError>;

    /// Returns the tenant and name of each campaign.
    async fn campaign_names(
        &mut self,
        campaign_pks: &[i64],
    ) -> Result<HashMap<i64, (String, String)>, StoreError>;

    /// Moves a campaign's analytics rows (per minute, latency bins, failure
    /// reasons, pricing) by `delta`, one upsert per key; zero keys are
    /// already dropped. Each minute row it moves records `version`, the
    /// campaign's counters version after this commit, so that streams can
    /// ask for the minutes changed since the version they have.
    async fn add_analytics(
        &mut self,
        campaign_pk: i64,
        delta: &AnalyticsDelta,
        version: i64,
    ) -> Result<(), StoreError>;

    /// [`CommitTx::add_analytics`] of several campaigns `(campaign_pk,
    /// delta, version)`; a backend whose statements cost a round trip each
    /// writes each table once for all of them.
    async fn add_analytics_many(
        &mut self,
        deltas: &[(i64, &AnalyticsDelta, i64)],
    ) -> Result<(), StoreError> {
        for (campaign_pk, delta, version) in deltas {
            self.add_analytics(*campaign_pk, delta, *version).await?;
        }
        Ok(())
    }

    /// Records the counters this commit changed, for other instances
    /// following the store (PostgreSQL: the outbox row and one wake-up per
    /// commit); nothing where one process owns the store (SQLite).
    async fn record_changes(&mut self, changed: &[&CounterRow]) -> Result<(), StoreError>;
}

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

/// Per campaign: the counter delta and how many versions it moves.
type Deltas = HashMap<i64, (Tally, i64)>;

/// Runs batches inside the transaction `tx`, as one batch holding each
/// kind of write of every batch in their order (what the DB actor would
/// have made of them had they queued together); returns each batch's own
/// outcome. The caller commits.
pub(crate) async fn commit_in<T: CommitTx>(
    tx: &mut T,
    batches: &[&Batch],
    now_ms: i64,
) -> Result<Vec<BatchOutcome>, StoreError> {
    let batch = Merged(batches);
    lock_batch(tx, batch).await?;
    let mut outcome = BatchOutcome::default();
    let mut deltas: Deltas = HashMap::new();
    let mut touched: HashSet<i64> = HashSet::new();
    // Each campaign's version as this commit moves it: every registration
    // and every changing event takes the next number, which the event row
    // keeps as the SSE cursor.
    let written: Vec<i64> = batch
        .registrations()
        .map(|registration| registration.campaign_pk)
        .chain(batch.applies().map(|apply| apply.campaign_pk))
        .collect();
    let mut versions = tx.counter_versions(&written).await?;

    // 1. Campaigns, registrations, buffers, dead letters, replay records,
    // pruning.
    for campaign in batch.campaigns() {
        let campaign_pk = tx
            .ensure_campaign(&campaign.tenant_id, &campaign.campaign_id, now_ms)
            .await?;
        outcome.campaigns.push(campaign_pk);
    }
    let mut registrations: Vec<Building<RegisterReceipt>> = Vec::new();
    let mut registered_messages: Vec<Vec<(Channel, String, i64)>> = Vec::new();
    let mut drained: Vec<(usize, i64, StatusUpdate)> = Vec::new();
    for (index, registration) in batch.registrations().enumerate() {
        let campaign_pk = registration.campaign_pk;
        let (receipt, registered) =
            register(tx, campaign_pk, &registration.messages, now_ms).await?;
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
        let keys: Vec<(Channel, &str)> = registered
            .iter()
            .map(|(channel, id, _)| (*channel, id.as_str()))
            .collect();
        let by_key: HashMap<(Channel, &str), i64> = registered
            .iter()
            .map(|(channel, id, message_pk)| ((*channel, id.as_str()), *message_pk))
            .collect();
        for update in tx.take_unmatched(&keys).await? {
            let key = (update.channel, update.provider_message_id.as_str());
            if let Some(message_pk) = by_key.get(&key).copied() {
                drained.push((index, message_pk, update));
            }
        }
        registrations.push(Building {
            campaign_pk,
            result: receipt,
            changes: Vec::new(),
        });
        registered_messages.push(registered);
    }
    for buffered in batch.buffers() {
        outcome
            .buffers
            .push(buffer(tx, &buffered.updates, now_ms).await?);
    }
    for letter in batch.dead_letters() {
        tx.insert_dead_letter(letter, now_ms).await?;
        outcome.dead_letters += 1;
    }
    for replay in batch.replays() {
        outcome
            .replays
            .push(tx.record_replay(replay, now_ms).await?);
    }
    for each in batch.prunes() {
        outcome.prunes.push(prune(tx, each).await?);
    }
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut applies: Vec<Building<Vec<UpdateOutcome>>> = Vec::new();
    for (apply, write) in batch.applies().enumerate() {
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
    let mut analytics = Vec::new();
    if !pending.is_empty() {
        analytics = apply_pending(
            tx,
            &pending,
            &mut versions,
            &mut deltas,
            &mut touched,
            &mut applies,
            &mut registrations,
            now_ms,
        )
        .await?;
    }

    // An analytics change that moved no status (a first `pricing` or an
    // earlier failure on a status the message had) still moves the
    // campaign's version, so that streams learn of it.
    for (campaign_pk, _) in &analytics {
        let entry = deltas.entry(*campaign_pk).or_default();
        if entry.1 == 0 {
            entry.1 = 1;
        }
        touched.insert(*campaign_pk);
    }

    // 3. Counters: deltas, so concurrent writers stay exact; then the
    // analytics rows, stamped with the version the counters reached.
    let counters = settle_counters(tx, touched, deltas, now_ms).await?;
    let stamped = analytics
        .iter()
        .map(|(campaign_pk, delta)| {
            let version = counters
                .get(campaign_pk)
                .map(|counters| counters.version)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("campaign {campaign_pk} has no counters row"))
                })?;
            Ok((*campaign_pk, delta, version))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if !stamped.is_empty() {
        tx.add_analytics_many(&stamped).await?;
    }
    let counters_of = |campaign_pk: i64| {
        counters.get(&campaign_pk).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!("campaign {campaign_pk} has no counters row"))
        })
    };
    for (building, messages) in registrations.into_iter().zip(registered_messages) {
        outcome.registrations.push(Registered {
            counters: counters_of(building.campaign_pk)?,
            receipt: building.result,
            messages,
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
    Ok(outcome.split(batches))
}

/// Batches committed together, seen as one: each kind of write of every
/// batch, in the batches' order.
#[derive(Clone, Copy)]
struct Merged<'b>(&'b [&'b Batch]);

impl<'b> Merged<'b> {
    fn campaigns(self) -> impl Iterator<Item = &'b EnsureCampaign> {
        self.0.iter().flat_map(|batch| batch.campaigns.iter())
    }

    fn registrations(self) -> impl Iterator<Item = &'b Register> {
        self.0.iter().flat_map(|batch| batch.registrations.iter())
    }

    fn applies(self) -> impl Iterator<Item = &'b Apply> {
        self.0.iter().flat_map(|batch| batch.applies.iter())
    }

    fn buffers(self) -> impl Iterator<Item = &'b Buffer> {
        self.0.iter().flat_map(|batch| batch.buffers.iter())
    }

    fn dead_letters(self) -> impl Iterator<Item = &'b DeadLetter> {
        self.0.iter().flat_map(|batch| batch.dead_letters.iter())
    }

    fn replays(self) -> impl Iterator<Item = &'b RecordReplay> {
        self.0.iter().flat_map(|batch| batch.replays.iter())
    }

    fn prunes(self) -> impl Iterator<Item = &'b Prune> {
        self.0.iter().flat_map(|batch| batch.prunes.iter())
    }
}

/// Locks every campaign the batch changes and every message id it
/// registers or buffers.
async fn lock_batch<T: CommitTx>(tx: &mut T, batch: Merged<'_>) -> Result<(), StoreError> {
    let campaigns: Vec<i64> = batch
        .registrations()
        .map(|registration| registration.campaign_pk)
        .chain(batch.applies().map(|apply| apply.campaign_pk))
        .collect();
    let messages: Vec<(Channel, &str)> = batch
        .registrations()
        .flat_map(|registration| {
            registration
                .messages
                .iter()
                .map(|message| (message.channel, message.provider_message_id.as_str()))
        })
        .chain(batch.buffers().flat_map(|buffer| {
            buffer
                .updates
                .iter()
                .map(|update| (update.channel, update.provider_message_id.as_str()))
        }))
        .collect();
    if campaigns.is_empty() && messages.is_empty() {
        return Ok(());
    }
    tx.lock(&campaigns, &messages).await
}

/// Registers messages in a campaign; returns the receipt and the messages
/// of this campaign (new or not) whose buffered statuses are to be applied,
/// as `(channel, provider id, message key)`.
async fn register<T: CommitTx>(
    tx: &mut T,
    campaign_pk: i64,
    messages: &[NewMessage],
    now_ms: i64,
) -> Result<(RegisterReceipt, Vec<(Channel, String, i64)>), StoreError> {
    let mut seen: HashSet<(Channel, &str)> = HashSet::new();
    let unique: Vec<&NewMessage> = messages
        .iter()
        .filter(|message| seen.insert((message.channel, message.provider_message_id.as_str())))
        .collect();
    let inserted = tx.insert_messages(campaign_pk, &unique, now_ms).await?;
    let keys: Vec<(Channel, &str)> = unique
        .iter()
        .map(|message| (message.channel, message.provider_message_id.as_str()))
        .collect();
    let mut receipt = RegisterReceipt::default();
    let mut registered = Vec::with_capacity(unique.len());
    for (channel, provider_message_id, found) in tx.find_messages(&keys).await? {
        if found.campaign_pk != campaign_pk {
            receipt.conflicts.push(provider_message_id);
            continue;
        }
        if inserted.contains(&(channel, provider_message_id.clone())) {
            receipt.registered += 1;
        } else {
            receipt.existing += 1;
        }
        registered.push((channel, provider_message_id, found.message_pk));
    }
    Ok((receipt, registered))
}

/// Buffers updates for unknown messages, unless the message exists by now
/// (then the update is to be routed to it).
async fn buffer<T: CommitTx>(
    tx: &mut T,
    updates: &[Arc<StatusUpdate>],
    now_ms: i64,
) -> Result<Vec<UpdateOutcome>, StoreError> {
    let keys: Vec<(Channel, &str)> = updates
        .iter()
        .map(|update| (update.channel, update.provider_message_id.as_str()))
        .collect();
    let known: HashMap<(Channel, String), MessageRef> = tx
        .find_messages(&keys)
        .await?
        .into_iter()
        .map(|(channel, id, found)| ((channel, id), found))
        .collect();
    let mut results = vec![UpdateOutcome::Duplicate; updates.len()];
    let mut to_insert: Vec<(usize, &StatusUpdate)> = Vec::new();
    let mut keys_in_op: HashSet<&str> = HashSet::new();
    for (index, update) in updates.iter().enumerate() {
        let key = (update.channel, update.provider_message_id.clone());
        if let Some(found) = known.get(&key) {
            results[index] = UpdateOutcome::Known(*found);
        } else if keys_in_op.insert(update.idempotency_key.as_str()) {
            to_insert.push((index, update));
        }
    }
    let rows: Vec<&StatusUpdate> = to_insert.iter().map(|(_, update)| *update).collect();
    let inserted = tx.insert_unmatched(&rows, now_ms).await?;
    for (index, update) in to_insert {
        if inserted.contains(&update.idempotency_key) {
            results[index] = UpdateOutcome::Buffered;
        }
    }
    Ok(results)
}

/// Deletes at most `limit` of the oldest rows of the target received before
/// the cut-off.
///
/// Timeline events and dead letters are read oldest first by id and the
/// leading run of old rows is deleted: the cost is the batch, never a scan
/// of the table. (On PostgreSQL a row with a lower id may commit later;
/// its `received_at` is then recent, so it ends the run and stays.) What
/// events were pruned is recorded (per campaign, the highest version;
/// store-wide, the highest id) so that resuming streams know what can no
/// longer be replayed.
async fn prune<T: CommitTx>(tx: &mut T, prune: &Prune) -> Result<u64, StoreError> {
    if prune.target == PruneTarget::Unmatched {
        return tx
            .delete_unmatched_before(prune.older_than_ms, prune.limit)
            .await;
    }
    let rows = tx.oldest(prune.target, prune.limit).await?;
    let old: Vec<&OldRow> = rows
        .iter()
        .take_while(|row| row.received_at_ms < prune.older_than_ms)
        .collect();
    let Some(through) = old.last().map(|row| row.id) else {
        return Ok(0);
    };
    let removed = tx.delete_through(prune.target, through).await?;
    if prune.target == PruneTarget::Events {
        let mut pruned: HashMap<i64, i64> = HashMap::new();
        for (campaign_pk, version) in old.iter().filter_map(|row| row.campaign_version) {
            let entry = pruned.entry(campaign_pk).or_default();
            *entry = (*entry).max(version);
        }
        let mut pruned: Vec<(i64, i64)> = pruned.into_iter().collect();
        pruned.sort_unstable();
        tx.raise_pruned_versions(&pruned).await?;
        tx.raise_events_pruned_through(through).await?;
    }
    Ok(removed)
}

/// Applies the pending updates to the message states read in the
/// transaction, writes the events and states, and records the outcomes,
/// changes and counter deltas. Returns each campaign's analytics delta
/// (pruned, never empty), in key order, for the caller to write once the
/// counters' versions are known.
#[allow(clippy::too_many_arguments)]
async fn apply_pending<T: CommitTx>(
    tx: &mut T,
    pending: &[Pending<'_>],
    versions: &mut HashMap<i64, i64>,
    deltas: &mut Deltas,
    touched: &mut HashSet<i64>,
    applies: &mut [Building<Vec<UpdateOutcome>>],
    registrations: &mut [Building<RegisterReceipt>],
    now_ms: i64,
) -> Result<Vec<(i64, AnalyticsDelta)>, StoreError> {
    let mut message_pks: Vec<i64> = pending.iter().map(|each| each.message_pk).collect();
    message_pks.sort_unstable();
    message_pks.dedup();
    let mut states = tx.load_states(&message_pks).await?;
    // What each message contributed to the analytics before the batch.
    let before: HashMap<i64, _> = states
        .iter()
        .filter(|(_, state)| state.counted)
        .map(|(message_pk, state)| (*message_pk, state.contribution()))
        .collect();
    let keys: Vec<&str> = pending
        .iter()
        .map(|each| each.update.idempotency_key.as_str())
        .collect();
    let existing = tx.existing_keys(&keys).await?;
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
    let event_ids = tx.insert_events(&applied.events, now_ms).await?;
    let mut dirty: Vec<(i64, &LoadedMessage)> = states
        .iter()
        .filter(|(_, state)| state.dirty)
        .map(|(message_pk, state)| (*message_pk, state))
        .collect();
    dirty.sort_unstable_by_key(|(message_pk, _)| *message_pk);
    tx.update_messages(&dirty, now_ms).await?;
    // Analytics move by what each changed message contributes now minus
    // what it did: one upsert per distinct key and campaign.
    let mut analytics: HashMap<i64, AnalyticsDelta> = HashMap::new();
    for (message_pk, state) in dirty.iter().filter(|(_, state)| state.counted) {
        let Some(was) = before.get(message_pk) else {
            continue;
        };
        analytics
            .entry(state.campaign_pk)
            .or_default()
            .transition(was, &state.contribution());
    }
    let mut analytics: Vec<(i64, AnalyticsDelta)> = analytics
        .into_iter()
        .filter_map(|(campaign_pk, mut delta)| {
            delta.prune();
            (!delta.is_empty()).then_some((campaign_pk, delta))
        })
        .collect();
    analytics.sort_unstable_by_key(|(campaign_pk, _)| *campaign_pk);
    let mut events = applied.events.iter();
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
        if result.is_none() {
            continue;
        }
        let Some(event) = events.next() else {
            continue;
        };
        let (Some(version), Some(ids)) = (
            event.version,
            event_ids.get(event.update.idempotency_key.as_str()),
        ) else {
            continue;
        };
        let change = StatusChange {
            event_id: ids.event_id,
            xact: ids.xact,
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
    for (campaign_pk, (delta, moved)) in applied.deltas {
        let entry = deltas.entry(campaign_pk).or_default();
        entry.0 = entry.0.plus(&delta);
        entry.1 += moved;
        touched.insert(campaign_pk);
    }
    Ok(analytics)
}

/// Changes the counters of every touched campaign by its delta, records the
/// changed ones, and returns each touched campaign's counters as dashboards
/// see them.
async fn settle_counters<T: CommitTx>(
    tx: &mut T,
    touched: HashSet<i64>,
    mut deltas: Deltas,
    now_ms: i64,
) -> Result<HashMap<i64, Arc<CampaignCounters>>, StoreError> {
    let mut touched: Vec<i64> = touched.into_iter().collect();
    // Key order, like the locks.
    touched.sort_unstable();
    let mut rows: Vec<CounterRow> = Vec::with_capacity(touched.len());
    let mut changes: Vec<(i64, Tally, i64)> = Vec::new();
    for campaign_pk in &touched {
        let (delta, moved) = deltas.remove(campaign_pk).unwrap_or_default();
        if delta.is_zero() && moved == 0 {
            rows.push(tx.counters(*campaign_pk).await?);
        } else {
            changes.push((*campaign_pk, delta, moved));
        }
    }
    if !changes.is_empty() {
        // In key order, like the locks.
        let changed = tx.add_to_counters_many(&changes, now_ms).await?;
        tx.record_changes(&changed.iter().collect::<Vec<_>>())
            .await?;
        rows.extend(changed);
    }
    let names = tx.campaign_names(&touched).await?;
    let mut named = HashMap::with_capacity(rows.len());
    for row in rows {
        let Some((tenant_id, campaign_id)) = names.get(&row.campaign_pk) else {
            return Err(StoreError::Corrupt(format!(
                "campaign {} has counters but no campaign row",
                row.campaign_pk
            )));
        };
        named.insert(row.campaign_pk, Arc::new(row.named(tenant_id, campaign_id)));
    }
    Ok(named)
}
