//! What the DB actor asks the store to commit ([`Batch`]), what it gets back
//! ([`BatchOutcome`]), and the backend-neutral part of a commit: applying a
//! batch of updates, in order, to message states read inside the
//! transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::domain::analytics::{Contribution, MessageFacts, Pricing, complaint_type};
use crate::domain::{
    CampaignCounters, Channel, CurrentStatus, Failure, Status, StatusSet, StatusUpdate, Tally,
};

use super::types::{MessageRef, ReceiptVerification, ReplayOutcome};

/// Creates the tenant and the campaign (with zeroed counters) if needed;
/// commits to the campaign's key.
#[derive(Clone, Debug)]
pub struct EnsureCampaign {
    pub tenant_id: String,
    pub campaign_id: String,
}

/// Registers messages in a campaign and applies their buffered statuses;
/// commits to [`Registered`].
#[derive(Clone, Debug)]
pub struct Register {
    pub campaign_pk: i64,
    pub messages: Vec<NewMessage>,
}

/// Applies updates to known messages of one campaign; commits to
/// [`Applied`].
#[derive(Clone, Debug)]
pub struct Apply {
    pub campaign_pk: i64,
    /// `(message_pk, update)` pairs. Shared, not copied, on their way from
    /// the webhook through the actors to the commit and back.
    pub updates: Vec<(i64, Arc<StatusUpdate>)>,
}

/// Buffers updates for message ids nobody registered (yet); commits to one
/// [`UpdateOutcome`] per update.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub updates: Vec<Arc<StatusUpdate>>,
}

/// Deletes at most `limit` of the oldest rows of `target` received before
/// `older_than_ms`: retention, in batches small enough never to hold the
/// write path. Commits to the number of rows deleted.
#[derive(Clone, Copy, Debug)]
pub struct Prune {
    pub target: PruneTarget,
    pub older_than_ms: i64,
    pub limit: u32,
}

/// What retention prunes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneTarget {
    /// Buffered statuses nobody registered a message for.
    Unmatched,
    /// Timeline events (`status_events`); what was pruned is remembered so
    /// a resume from before it gets a reset.
    Events,
    /// Dead letters.
    DeadLetters,
    /// The outbox other instances follow (PostgreSQL): needed only until
    /// every instance has read it.
    Outbox,
}

impl PruneTarget {
    /// The name used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            PruneTarget::Unmatched => "unmatched_statuses",
            PruneTarget::Events => "status_events",
            PruneTarget::DeadLetters => "dead_letters",
            PruneTarget::Outbox => "campaign_changes",
        }
    }
}

/// Everything one commit writes, by kind. Every write statushub makes is one
/// of these, so a single actor owns the write connection and batches them.
///
/// `Store::commit` answers with a [`BatchOutcome`] holding, kind by
/// kind and in the same order, one outcome per write: each kind has its own
/// outcome type, so a write cannot be answered with another's.
///
/// Within a commit, kinds are applied in this order: campaigns,
/// registrations (with the buffered statuses they release), buffers, dead
/// letters, replay records, pruning, then the updates of `applies`.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub campaigns: Vec<EnsureCampaign>,
    pub registrations: Vec<Register>,
    pub applies: Vec<Apply>,
    pub buffers: Vec<Buffer>,
    pub dead_letters: Vec<DeadLetter>,
    pub replays: Vec<RecordReplay>,
    pub prunes: Vec<Prune>,
}

/// The outcomes of a [`Batch`], kind by kind, in the batch's order.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The transaction the batch was committed in, on the first batch of
    /// it only; `None` where the store does not say (the DB actor then
    /// times the commit itself).
    pub transaction: Option<Transaction>,
    /// The key of each campaign.
    pub campaigns: Vec<i64>,
    pub registrations: Vec<Registered>,
    pub applies: Vec<Applied>,
    /// One outcome per buffered update.
    pub buffers: Vec<Vec<UpdateOutcome>>,
    /// How many dead letters were stored.
    pub dead_letters: usize,
    /// For each replay record, whether its dead letter still exists.
    pub replays: Vec<bool>,
    /// Rows deleted by each prune.
    pub prunes: Vec<u64>,
}

impl Batch {
    /// The rows the batch is worth, as the DB actor's bounds count them.
    pub fn rows(&self) -> usize {
        fn sum<W: Weight>(writes: &[W]) -> usize {
            writes.iter().map(Weight::weight).sum()
        }
        sum(&self.campaigns)
            + sum(&self.registrations)
            + sum(&self.applies)
            + sum(&self.buffers)
            + sum(&self.dead_letters)
            + sum(&self.replays)
            + sum(&self.prunes)
    }
}

impl BatchOutcome {
    /// Splits the outcome of batches committed as one (see
    /// [`super::commit::commit_in`]) into each batch's own, in order.
    pub(crate) fn split(mut self, batches: &[&Batch]) -> Vec<BatchOutcome> {
        fn tail<T>(all: &mut Vec<T>, count: usize) -> Vec<T> {
            all.split_off(all.len().saturating_sub(count))
        }
        if batches.len() == 1 {
            return vec![self];
        }
        let mut parts: Vec<BatchOutcome> = batches
            .iter()
            .rev()
            .map(|batch| {
                let dead_letters = batch.dead_letters.len().min(self.dead_letters);
                self.dead_letters -= dead_letters;
                BatchOutcome {
                    transaction: None,
                    campaigns: tail(&mut self.campaigns, batch.campaigns.len()),
                    registrations: tail(&mut self.registrations, batch.registrations.len()),
                    applies: tail(&mut self.applies, batch.applies.len()),
                    buffers: tail(&mut self.buffers, batch.buffers.len()),
                    dead_letters,
                    replays: tail(&mut self.replays, batch.replays.len()),
                    prunes: tail(&mut self.prunes, batch.prunes.len()),
                }
            })
            .collect();
        parts.reverse();
        parts
    }
}

/// One transaction of the SQLite writer, which may hold several batches.
#[derive(Clone, Copy, Debug)]
pub struct Transaction {
    /// Batches it holds: this one and the next ones handed over.
    pub batches: usize,
    /// Rows of all its batches.
    pub rows: usize,
    /// From its first statement to the end of its commit.
    pub seconds: f64,
}

/// What a registration committed.
#[derive(Clone, Debug)]
pub struct Registered {
    pub receipt: RegisterReceipt,
    /// The registration's messages of this campaign (new or already
    /// there), as `(channel, provider id, message key)`: what the hub's
    /// directory of message ids learns.
    pub messages: Vec<(Channel, String, i64)>,
    /// The campaign's counters after the commit.
    pub counters: Arc<CampaignCounters>,
    /// Changes made by the buffered statuses the registration released.
    pub changes: Vec<StatusChange>,
}

/// What applying updates committed.
#[derive(Clone, Debug)]
pub struct Applied {
    /// One outcome per update, in order.
    pub outcomes: Vec<UpdateOutcome>,
    /// The campaign's counters after the commit.
    pub counters: Arc<CampaignCounters>,
    /// The changes the updates made, in event-id order.
    pub changes: Vec<StatusChange>,
}

/// How many rows a write is worth, roughly: what the DB actor's queue bound
/// and batch bound count.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for EnsureCampaign {
    fn weight(&self) -> usize {
        1
    }
}

impl Weight for Register {
    fn weight(&self) -> usize {
        self.messages.len().max(1)
    }
}

impl Weight for Apply {
    fn weight(&self) -> usize {
        self.updates.len().max(1)
    }
}

impl Weight for Buffer {
    fn weight(&self) -> usize {
        self.updates.len().max(1)
    }
}

impl Weight for DeadLetter {
    fn weight(&self) -> usize {
        1
    }
}

impl Weight for RecordReplay {
    fn weight(&self) -> usize {
        1
    }
}

impl Weight for Prune {
    fn weight(&self) -> usize {
        1
    }
}

/// A message to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub channel: Channel,
    pub provider_message_id: String,
    pub recipient: Option<String>,
}

/// A payload kept verbatim because it could not be interpreted.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub channel: Channel,
    pub reason: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// How the sender was verified: what lets a replay skip a second
    /// signature check.
    pub verification: ReceiptVerification,
}

/// Records the outcome of a dead letter's replay (the statuses it carried
/// were applied by the usual path before); commits to whether the letter
/// still exists (retention may have removed it meanwhile).
#[derive(Clone, Debug)]
pub struct RecordReplay {
    pub id: i64,
    pub outcome: ReplayOutcome,
    /// What stayed uninterpretable, clipped.
    pub error: Option<String>,
    pub received: i64,
    pub applied: i64,
    pub duplicates: i64,
    pub unmatched: i64,
}

/// What happened to one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Recorded in the timeline; `changed` tells whether the status set moved.
    Applied { changed: bool },
    /// This notification was recorded before.
    Duplicate,
    /// Kept until its message is registered.
    Buffered,
    /// Its message was registered after the update was routed: route it again.
    Known(MessageRef),
}

/// A campaign's counters row, as a commit leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CounterRow {
    pub campaign_pk: i64,
    pub version: i64,
    pub tally: Tally,
    pub updated_at_ms: i64,
}

impl CounterRow {
    /// Returns these counters as dashboards see them, for the named campaign.
    pub(crate) fn named(&self, tenant_id: &str, campaign_id: &str) -> CampaignCounters {
        CampaignCounters::from_tally(
            tenant_id,
            campaign_id,
            self.version,
            &self.tally,
            self.updated_at_ms,
        )
    }
}

/// What a registration did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RegisterReceipt {
    /// Messages newly registered.
    pub registered: usize,
    /// Messages that were already registered in this campaign.
    pub existing: usize,
    /// Provider ids already registered in another campaign (left untouched).
    pub conflicts: Vec<String>,
    /// Buffered statuses applied to the registered messages.
    pub applied_buffered: usize,
}

impl std::ops::AddAssign for RegisterReceipt {
    /// Adds another part's receipt: registrations are split by campaign and
    /// into batches, and answered as one.
    fn add_assign(&mut self, other: RegisterReceipt) {
        self.registered += other.registered;
        self.existing += other.existing;
        self.applied_buffered += other.applied_buffered;
        self.conflicts.extend(other.conflicts);
    }
}

/// A committed change of one message's status set: what live dashboards are
/// sent as `event: status` (the SSE layer shapes the JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// Row id in `status_events`: a cursor across every campaign.
    pub event_id: i64,
    /// The commit-order key of the transaction that wrote it (PostgreSQL's
    /// transaction id; 0 on SQLite, whose event ids follow commit order):
    /// with `event_id`, the position tenant streams follow.
    pub xact: i64,
    pub campaign_pk: i64,
    /// The campaign's counters version right after this change.
    pub version: i64,
    pub channel: Channel,
    pub provider_message_id: String,
    /// The provider's name of the event (`read`, `Bounce`…).
    pub event: String,
    /// The message's current status after the change.
    pub status: CurrentStatus,
    /// Provider timestamp, Unix milliseconds.
    pub provider_ts_ms: i64,
}

impl StatusChange {
    /// Where this change is in the order tenant streams follow.
    pub fn position(&self) -> super::types::EventPosition {
        super::types::EventPosition {
            xact: self.xact,
            event_id: self.event_id,
        }
    }
}

/// A message's state as read inside the transaction, and changed there.
#[derive(Clone, Debug)]
pub(crate) struct LoadedMessage {
    pub campaign_pk: i64,
    pub channel: Channel,
    pub set: StatusSet,
    pub failure: Option<Failure>,
    /// The feedback type of the earliest complaint that gave one.
    pub complaint_type: Option<String>,
    /// The pricing of the earliest status that carried one (WhatsApp).
    pub pricing: Option<Pricing>,
    /// False for messages registered before the analytics tables existed:
    /// they are not counted there.
    pub counted: bool,
    pub dirty: bool,
}

impl LoadedMessage {
    /// Returns what this message contributes to its campaign's analytics.
    pub(crate) fn contribution(&self) -> Contribution {
        Contribution::of(&MessageFacts {
            channel: self.channel,
            set: &self.set,
            failure: self.failure.as_ref(),
            complaint_type: self.complaint_type.as_deref(),
            pricing: self.pricing.as_ref(),
        })
    }
}

/// An event row to insert.
#[derive(Clone, Debug)]
pub(crate) struct EventRow<'a> {
    pub message_pk: i64,
    pub campaign_pk: i64,
    pub update: &'a StatusUpdate,
    pub changed: bool,
    /// The message's current status after this event.
    pub current: CurrentStatus,
    /// The campaign version this change produced (set by the backend, which
    /// knows the version the batch started from); `None` when unchanged.
    pub version: Option<i64>,
}

/// What applying a batch of updates produced: the rows to write and the
/// counter deltas per campaign.
#[derive(Debug, Default)]
pub(crate) struct AppliedUpdates<'a> {
    /// Per input update: `None` for a duplicate, else whether it changed the message.
    pub results: Vec<Option<bool>>,
    pub events: Vec<EventRow<'a>>,
    /// Per campaign: the counter delta and how many changes raise the version.
    pub deltas: HashMap<i64, (Tally, i64)>,
}

/// Applies `updates` in order to `states` (loaded in the transaction),
/// passing over notifications whose idempotency key is in `existing_keys` or
/// repeats earlier in the batch. Pure: the caller writes what it returns.
///
/// # Implementation Notes
///
/// A failure reason is kept from the failure with the earliest provider
/// timestamp, so which reason a message keeps does not depend on arrival
/// order either (ties keep the one already stored); a complaint's feedback
/// type likewise. A WhatsApp pricing is kept from the status with the
/// earliest timestamp (ties: the smallest category, then `billable`).
pub(crate) fn apply_updates<'a>(
    states: &mut HashMap<i64, LoadedMessage>,
    updates: &[(i64, &'a StatusUpdate)],
    existing_keys: &HashSet<String>,
) -> AppliedUpdates<'a> {
    let mut applied = AppliedUpdates::default();
    let mut batch_keys: HashSet<&str> = HashSet::with_capacity(updates.len());
    for &(message_pk, update) in updates {
        let key = update.idempotency_key.as_str();
        let Some(state) = states.get_mut(&message_pk) else {
            // The message row vanished: nothing deletes messages, so this is
            // a bug upstream; treat the update as already seen rather than
            // inventing a row.
            applied.results.push(None);
            continue;
        };
        if existing_keys.contains(key) || !batch_keys.insert(key) {
            applied.results.push(None);
            continue;
        }
        let before = state.set;
        let after = match update.status {
            Some(status) => before.with(status, update.timestamp_ms),
            None => before,
        };
        if update.status == Some(Status::Failed) {
            if let Some(failure) = &update.failure {
                let earlier = before
                    .first_seen(Status::Failed)
                    .is_none_or(|first| update.timestamp_ms < first);
                if state.failure.is_none() || earlier {
                    state.failure = Some(failure.clone());
                    state.dirty = true;
                }
            }
        }
        if update.status == Some(Status::Complained) {
            if let Some(feedback) = complaint_type(&update.details) {
                let earlier = before
                    .first_seen(Status::Complained)
                    .is_none_or(|first| update.timestamp_ms < first);
                if state.complaint_type.is_none() || earlier {
                    state.complaint_type = Some(feedback);
                    state.dirty = true;
                }
            }
        }
        if update.channel == Channel::Whatsapp {
            if let Some(pricing) = Pricing::from_details(&update.details, update.timestamp_ms) {
                if state
                    .pricing
                    .as_ref()
                    .is_none_or(|kept| pricing.precedes(kept))
                {
                    state.pricing = Some(pricing);
                    state.dirty = true;
                }
            }
        }
        let changed = after != before;
        if changed {
            state.set = after;
            state.dirty = true;
            let entry = applied.deltas.entry(state.campaign_pk).or_default();
            entry.0 = entry.0.plus(&Tally::transition(Some(&before), &after));
            entry.1 += 1;
        }
        applied.events.push(EventRow {
            message_pk,
            campaign_pk: state.campaign_pk,
            update,
            changed,
            current: after.current(),
            version: None,
        });
        applied.results.push(Some(changed));
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_outcome_splits_back_into_each_batchs_own() {
        let prune = || Prune {
            target: PruneTarget::Unmatched,
            older_than_ms: 0,
            limit: 1,
        };
        let letter = || DeadLetter {
            channel: Channel::Whatsapp,
            reason: String::new(),
            content_type: None,
            body: Vec::new(),
            verification: crate::store::ReceiptVerification::Disabled,
        };
        let campaign = || EnsureCampaign {
            tenant_id: "t".to_owned(),
            campaign_id: "c".to_owned(),
        };
        let first = Batch {
            campaigns: vec![campaign(), campaign()],
            dead_letters: vec![letter()],
            prunes: vec![prune()],
            ..Batch::default()
        };
        let second = Batch::default();
        let third = Batch {
            campaigns: vec![campaign()],
            dead_letters: vec![letter(), letter()],
            prunes: vec![prune(), prune()],
            ..Batch::default()
        };
        let merged = BatchOutcome {
            campaigns: vec![1, 2, 3],
            dead_letters: 3,
            prunes: vec![10, 20, 30],
            ..BatchOutcome::default()
        };

        let parts = merged.split(&[&first, &second, &third]);

        let shapes: Vec<(Vec<i64>, usize, Vec<u64>)> = parts
            .into_iter()
            .map(|part| (part.campaigns, part.dead_letters, part.prunes))
            .collect();
        assert_eq!(
            shapes,
            vec![
                (vec![1, 2], 1, vec![10]),
                (vec![], 0, vec![]),
                (vec![3], 2, vec![20, 30]),
            ]
        );
        assert_eq!((first.rows(), second.rows(), third.rows()), (4, 0, 5));
    }

    fn update(key: &str, status: Status, ts: i64) -> StatusUpdate {
        StatusUpdate {
            channel: Channel::Whatsapp,
            provider_message_id: "wamid.1".to_owned(),
            event: status.as_str().to_owned(),
            status: Some(status),
            timestamp_ms: ts,
            idempotency_key: key.to_owned(),
            failure: None,
            details: serde_json::Value::Null,
            stored: Default::default(),
        }
    }

    fn one_message() -> HashMap<i64, LoadedMessage> {
        HashMap::from([(
            1,
            LoadedMessage {
                campaign_pk: 7,
                channel: Channel::Whatsapp,
                set: StatusSet::EMPTY,
                failure: None,
                complaint_type: None,
                pricing: None,
                counted: true,
                dirty: false,
            },
        )])
    }

    #[test]
    fn duplicates_in_batch_and_in_store_are_skipped() {
        let mut states = one_message();
        let read = update("k-read", Status::Read, 10);
        let delivered = update("k-delivered", Status::Delivered, 5);
        let existing = HashSet::from(["k-delivered".to_owned()]);
        let applied = apply_updates(
            &mut states,
            &[(1, &read), (1, &read), (1, &delivered)],
            &existing,
        );
        assert_eq!(applied.results, vec![Some(true), None, None]);
        assert_eq!(applied.events.len(), 1);
        let (delta, versions) = applied.deltas[&7];
        assert_eq!(
            (delta.read, delta.delivered, delta.sent, versions),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn implied_status_arriving_later_only_records_its_timestamp() {
        let mut states = one_message();
        let read = update("k-read", Status::Read, 10);
        let delivered = update("k-delivered", Status::Delivered, 5);
        let applied = apply_updates(&mut states, &[(1, &read), (1, &delivered)], &HashSet::new());
        // The set is unchanged by `delivered`, but its first timestamp is new.
        assert_eq!(applied.results, vec![Some(true), Some(true)]);
        let (delta, _) = applied.deltas[&7];
        assert_eq!(delta.delivered, 1);
        assert_eq!(states[&1].set.first_seen(Status::Delivered), Some(5));
    }

    #[test]
    fn earliest_failure_reason_wins() {
        let mut states = one_message();
        let mut late = update("k-late", Status::Failed, 20);
        late.failure = Some(Failure {
            code: "late".into(),
            title: "late".into(),
        });
        let mut early = update("k-early", Status::Failed, 10);
        early.failure = Some(Failure {
            code: "early".into(),
            title: "early".into(),
        });
        apply_updates(&mut states, &[(1, &late), (1, &early)], &HashSet::new());
        assert_eq!(
            states[&1].failure.as_ref().map(|f| f.code.as_str()),
            Some("early")
        );
    }
}
