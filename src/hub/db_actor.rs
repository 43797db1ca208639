//! The DB actor: owns the write side of the store and commits everything
//! queued in one transaction (group commit).
//!
//! It hands the store the writes queued, as one batch, as long as fewer
//! batches than the store takes are out ([`Store::commits_in_flight`]):
//! PostgreSQL commits one batch at a time, and whatever queued meanwhile
//! (up to `max_batch` rows) is the next; SQLite's writer thread takes
//! batches as they come and merges all that queued while it was busy into
//! its next transaction. Under load, commits grow by themselves and one
//! fsync covers many webhooks; at rest, a lone webhook is committed at
//! once, with no linger delay. Commits are published and answered in the
//! order they were handed over. Each [`Persist`] carries its reply, of the
//! write's own outcome type, so a webhook is answered only after the commit
//! that holds it, and never with another write's outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::broadcast::{Broadcaster, CommitUpdate};
use super::error::HubError;
use super::group::OneInFlight;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::{
    Applied, Apply, Batch, BatchOutcome, Buffer, DeadLetter, EnsureCampaign, Prune, RecordReplay,
    Register, Registered, Store, UpdateOutcome, Weight,
};

/// Capacity of the actor's mailbox. Messages are only queued there for the
/// moment it takes to move them into the queue; the real bound is `max_queue`.
const MAILBOX_CAPACITY: usize = 16_384;

/// Where one write's outcome goes.
pub type Reply<T> = oneshot::Sender<Result<T, HubError>>;

/// A write the DB actor commits, and the type of its outcome.
pub trait Write: Weight + Send + Unpin + 'static {
    type Outcome: Send + 'static;

    /// Pairs the write with its reply for the queue.
    fn queued(self, reply: Reply<Self::Outcome>) -> Queued;
}

/// A queued write with its reply: each kind with its own outcome type.
#[derive(Debug)]
pub enum Queued {
    Campaign(EnsureCampaign, Reply<i64>),
    Register(Register, Reply<Registered>),
    Apply(Apply, Reply<Applied>),
    Buffer(Buffer, Reply<Vec<UpdateOutcome>>),
    DeadLetter(DeadLetter, Reply<()>),
    Replay(RecordReplay, Reply<bool>),
    Prune(Prune, Reply<u64>),
}

macro_rules! write_kind {
    ($write:ty, $outcome:ty, $variant:ident) => {
        impl Write for $write {
            type Outcome = $outcome;

            fn queued(self, reply: Reply<$outcome>) -> Queued {
                Queued::$variant(self, reply)
            }
        }
    };
}

write_kind!(EnsureCampaign, i64, Campaign);
write_kind!(Register, Registered, Register);
write_kind!(Apply, Applied, Apply);
write_kind!(Buffer, Vec<UpdateOutcome>, Buffer);
write_kind!(DeadLetter, (), DeadLetter);
write_kind!(RecordReplay, bool, Replay);
write_kind!(Prune, u64, Prune);

// ---- messages ----

/// Asks the DB actor to commit a write with the next batch; replies with
/// the write's own outcome type once the transaction holding it committed.
#[derive(Debug)]
pub struct Persist<W: Write>(pub W);

impl<W: Write> Message for Persist<W> {
    type Result = Result<W::Outcome, HubError>;
}

/// Asks the DB actor how many statuses wait for a commit.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct QueueDepth;

/// Asks the DB actor whether nothing waits for a commit and none is in
/// flight (shutdown waits for this before closing the store).
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct IsIdle;

/// The replies of a batch, kind by kind, in the batch's order.
#[derive(Debug, Default)]
struct Replies {
    campaigns: Vec<Reply<i64>>,
    registrations: Vec<Reply<Registered>>,
    applies: Vec<Reply<Applied>>,
    buffers: Vec<Reply<Vec<UpdateOutcome>>>,
    dead_letters: Vec<Reply<()>>,
    replays: Vec<Reply<bool>>,
    prunes: Vec<Reply<u64>>,
}

/// Splits a group into the batch to commit and the replies awaiting it.
fn split(group: Vec<Queued>) -> (Batch, Replies) {
    let mut batch = Batch::default();
    let mut replies = Replies::default();
    for queued in group {
        match queued {
            Queued::Campaign(write, reply) => {
                batch.campaigns.push(write);
                replies.campaigns.push(reply);
            }
            Queued::Register(write, reply) => {
                batch.registrations.push(write);
                replies.registrations.push(reply);
            }
            Queued::Apply(write, reply) => {
                batch.applies.push(write);
                replies.applies.push(reply);
            }
            Queued::Buffer(write, reply) => {
                batch.buffers.push(write);
                replies.buffers.push(reply);
            }
            Queued::DeadLetter(write, reply) => {
                batch.dead_letters.push(write);
                replies.dead_letters.push(reply);
            }
            Queued::Replay(write, reply) => {
                batch.replays.push(write);
                replies.replays.push(reply);
            }
            Queued::Prune(write, reply) => {
                batch.prunes.push(write);
                replies.prunes.push(reply);
            }
        }
    }
    (batch, replies)
}

/// Sends each reply its outcome, in order; a reply left without one (a
/// store that answered fewer outcomes than writes, which it must not) gets
/// "unavailable", so nothing is acknowledged that was not committed.
fn answer<T>(replies: Vec<Reply<T>>, outcomes: Vec<T>) {
    let mut outcomes = outcomes.into_iter();
    for reply in replies {
        let outcome = outcomes.next().ok_or(HubError::Unavailable);
        // The caller may have gone away; nothing to do then.
        let _ = reply.send(outcome);
    }
}

impl Replies {
    fn answer(self, outcome: BatchOutcome) {
        answer(self.campaigns, outcome.campaigns);
        answer(self.registrations, outcome.registrations);
        answer(self.applies, outcome.applies);
        answer(self.buffers, outcome.buffers);
        answer(self.dead_letters, vec![(); outcome.dead_letters]);
        answer(self.replays, outcome.replays);
        answer(self.prunes, outcome.prunes);
    }

    fn fail(self) {
        answer(self.campaigns, Vec::new());
        answer(self.registrations, Vec::new());
        answer(self.applies, Vec::new());
        answer(self.buffers, Vec::new());
        answer(self.dead_letters, Vec::new());
        answer(self.replays, Vec::new());
        answer(self.prunes, Vec::new());
    }
}

/// A batch whose commit ended, waiting to be settled in order.
#[derive(Debug)]
struct Ended {
    batch: Arc<Batch>,
    replies: Replies,
    /// Rows of this batch.
    rows: usize,
    /// From handing it over to its outcome.
    seconds: f64,
    result: Result<BatchOutcome, crate::store::StoreError>,
}

/// The DB actor. See the module docs.
#[derive(Debug)]
pub struct DbActor {
    /// The only writer of the store.
    store: Store,
    /// Writes waiting to be handed to the store, as many batches out at a
    /// time as it takes (commits must follow arrival). Bounded, with the
    /// rows in flight, by `max_queue`; beyond it, `Persist` fails with
    /// [`HubError::Overloaded`] so webhooks answer 503 and memory stays
    /// bounded.
    queue: OneInFlight<Queued>,
    /// Rows handed to the store and not yet committed (beyond one
    /// transaction's worth, counted against `max_queue` with the queued
    /// ones).
    in_flight_rows: usize,
    /// Number of the next batch handed to the store.
    sent: u64,
    /// Number of the next batch whose commit is settled here: commits are
    /// published and answered in the order they were made.
    settled: u64,
    /// Commits that ended and are not settled yet (one handed over earlier,
    /// or another batch of the same transaction, has not ended), by number.
    ended: BTreeMap<u64, Ended>,
    /// Most rows in one commit.
    max_batch: usize,
    /// Most rows waiting for a commit.
    max_queue: usize,
    /// Commit timings, batch sizes, queue depth, failures.
    metrics: Metrics,
    /// Where each commit's changes go, once, in commit order; `None` when
    /// the store is shared and the change follower publishes every
    /// instance's commits (see [`super::follower`]).
    broadcaster: Option<Broadcaster>,
}

impl DbActor {
    /// Returns a DB actor over `store` with the given bounds.
    pub fn new(
        store: Store,
        max_batch: usize,
        max_queue: usize,
        metrics: Metrics,
        broadcaster: Option<Broadcaster>,
    ) -> Self {
        DbActor {
            queue: OneInFlight::with_limit(store.commits_in_flight()),
            store,
            in_flight_rows: 0,
            sent: 0,
            settled: 0,
            ended: BTreeMap::new(),
            max_batch,
            max_queue,
            metrics,
            broadcaster,
        }
    }

    /// Rows waiting for a commit: queued here, or handed to the store and
    /// not yet committed.
    fn waiting_rows(&self) -> usize {
        self.queue.queued_weight() + self.in_flight_rows
    }

    fn set_depth_metric(&self) {
        self.metrics
            .db_queue_depth
            .set(i64::try_from(self.waiting_rows()).unwrap_or(i64::MAX));
    }

    /// Hands the oldest queued writes to the store as one batch, as long as
    /// fewer than [`Store::commits_in_flight`] are out (SQLite: the writer
    /// merges what it finds queued; PostgreSQL: one at a time).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        while let Some((group, rows)) = self.queue.next_group(self.max_batch) {
            self.set_depth_metric();
            let (batch, replies) = split(group);
            let batch = Arc::new(batch);
            let number = self.sent;
            self.sent += 1;
            self.in_flight_rows += rows;
            // Handed over here, in number order (actix polls spawned
            // futures in no fixed order).
            let started = Instant::now();
            let committing = self.store.submit(Arc::clone(&batch), now_ms());
            let commit = async move {
                let result = committing.await;
                Ended {
                    batch,
                    replies,
                    rows,
                    seconds: started.elapsed().as_secs_f64(),
                    result,
                }
            };
            ctx.spawn(commit.into_actor(self).map(move |ended, actor, ctx| {
                actor.ended.insert(number, ended);
                actor.settle();
                actor.flush(ctx);
            }));
        }
    }

    /// Publishes and answers the commits that ended, in the order they were
    /// handed over; the batches of one transaction together, once all of
    /// them have ended.
    fn settle(&mut self) {
        loop {
            let Some(first) = self.ended.get(&self.settled) else {
                return;
            };
            // A merged transaction is told with its first batch; the others
            // are the next numbers (the writer takes jobs in order).
            let together = match &first.result {
                Ok(outcome) => outcome
                    .transaction
                    .map_or(1, |transaction| transaction.batches.max(1)),
                Err(_) => 1,
            };
            let numbers = self.settled..self.settled + together as u64;
            if !numbers
                .clone()
                .all(|number| self.ended.contains_key(&number))
            {
                return;
            }
            let group: Vec<Ended> = numbers
                .filter_map(|number| self.ended.remove(&number))
                .collect();
            self.settled += together as u64;
            self.settle_transaction(group);
        }
    }

    /// Settles the batches of one transaction: counts it, publishes what it
    /// changed as one update (the counters are those after the whole
    /// transaction, and its changes are ordered across its batches), then
    /// answers each batch's writes.
    fn settle_transaction(&mut self, group: Vec<Ended>) {
        for ended in &group {
            self.queue.finish();
            self.in_flight_rows = self.in_flight_rows.saturating_sub(ended.rows);
        }
        let committed: Vec<(&Batch, &BatchOutcome)> = group
            .iter()
            .filter_map(|ended| match &ended.result {
                Ok(outcome) => Some((&*ended.batch, outcome)),
                Err(_) => None,
            })
            .collect();
        // The store's own figures when it has them: the SQLite writer merges
        // batches, and times its transactions.
        match committed
            .first()
            .and_then(|(_, outcome)| outcome.transaction)
        {
            Some(transaction) => {
                self.metrics.db_commit_seconds.observe(transaction.seconds);
                self.metrics.db_batch_rows.observe(transaction.rows as f64);
            }
            None => {
                for ended in group.iter().filter(|ended| ended.result.is_ok()) {
                    self.metrics.db_commit_seconds.observe(ended.seconds);
                    self.metrics.db_batch_rows.observe(ended.rows as f64);
                }
            }
        }
        // Publish before replying: a dashboard may see a change a moment
        // before the provider gets its 200, never after.
        self.publish(&committed);
        for ended in group {
            let Ended {
                replies,
                rows,
                seconds,
                result,
                ..
            } = ended;
            match result {
                Ok(outcome) => replies.answer(outcome),
                Err(error) => {
                    tracing::error!(error = %error, source = ?std::error::Error::source(&error), "commit failed");
                    self.metrics.db_commit_failures.inc();
                    self.metrics.db_commit_seconds.observe(seconds);
                    self.metrics.db_batch_rows.observe(rows as f64);
                    replies.fail();
                }
            }
        }
        self.set_depth_metric();
    }

    /// Publishes what a transaction changed, as one update, when anyone
    /// listens.
    fn publish(&self, committed: &[(&Batch, &BatchOutcome)]) {
        let Some(broadcaster) = self.broadcaster.as_ref().filter(|b| b.has_subscribers()) else {
            return;
        };
        let writes = committed.iter().flat_map(|(batch, outcome)| {
            let registrations = batch
                .registrations
                .iter()
                .zip(&outcome.registrations)
                .map(|(write, done)| (write.campaign_pk, &done.counters, done.changes.as_slice()));
            let applies = batch
                .applies
                .iter()
                .zip(&outcome.applies)
                .map(|(write, done)| (write.campaign_pk, &done.counters, done.changes.as_slice()));
            registrations.chain(applies)
        });
        if let Some(update) = CommitUpdate::from_writes(writes) {
            broadcaster.publish(update);
        }
    }
}

impl Actor for DbActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl<W: Write> Handler<Persist<W>> for DbActor {
    type Result = ResponseFuture<Result<W::Outcome, HubError>>;

    /// Handler for `Persist`: queues the write (or refuses it when the queue
    /// is full) and resolves once its batch has committed.
    fn handle(&mut self, Persist(write): Persist<W>, ctx: &mut Self::Context) -> Self::Result {
        let weight = write.weight();
        // What waits for a commit: the queue, and what was handed over
        // beyond one transaction's worth (the writer may be committing that
        // much, as a single batch in flight was not counted before).
        let waiting =
            self.queue.queued_weight() + self.in_flight_rows.saturating_sub(self.max_batch);
        if waiting + weight > self.max_queue && waiting > 0 {
            self.metrics.db_queue_rejections.inc();
            return Box::pin(async { Err(HubError::Overloaded) });
        }
        let (reply, outcome) = oneshot::channel();
        self.queue.push(write.queued(reply), weight);
        self.set_depth_metric();
        self.flush(ctx);
        Box::pin(async move { outcome.await.unwrap_or(Err(HubError::Unavailable)) })
    }
}

impl Handler<QueueDepth> for DbActor {
    type Result = usize;

    /// Handler for `QueueDepth`: returns the rows waiting for a commit
    /// (queued, or handed to the store and not yet committed).
    fn handle(&mut self, _: QueueDepth, _: &mut Self::Context) -> usize {
        self.waiting_rows()
    }
}

impl Handler<IsIdle> for DbActor {
    type Result = bool;

    /// Handler for `IsIdle`: whether no write is queued or committing.
    fn handle(&mut self, _: IsIdle, _: &mut Self::Context) -> bool {
        self.queue.is_idle()
    }
}
