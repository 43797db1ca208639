//! The DB actor: owns the write side of the store and commits everything
//! queued in one transaction (group commit).
//!
//! It commits as soon as the previous commit has finished, taking everything
//! that queued meanwhile (up to `max_batch` rows): under load, batches grow
//! by themselves and one fsync covers many webhooks; at rest, a lone webhook
//! is committed at once, with no linger delay. Each [`Persist`] carries its
//! reply, so a webhook is answered only after the commit that holds it.

use std::collections::VecDeque;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::HubError;
use super::messages::{Persist, QueueDepth};
use crate::metrics::Metrics;
use crate::sse::{Broadcaster, CommitUpdate};
use crate::store::{OpOutcome, Store, WriteOp, now_ms};

/// Capacity of the actor's mailbox. Messages are only queued there for the
/// moment it takes to move them into `queue`; the real bound is `max_queue`.
const MAILBOX_CAPACITY: usize = 16_384;

/// A queued op and the channel its outcome goes back on.
#[derive(Debug)]
struct Queued {
    op: WriteOp,
    reply: oneshot::Sender<Result<OpOutcome, HubError>>,
}

/// The DB actor. See the module docs.
#[derive(Debug)]
pub struct DbActor {
    store: Store,
    /// Ops waiting for the next commit, oldest first. Bounded by
    /// `max_queue` rows (sum of [`WriteOp::weight`]); beyond it, `Persist`
    /// fails with [`HubError::Overloaded`] so webhooks answer 503 and memory
    /// stays bounded.
    queue: VecDeque<Queued>,
    /// Sum of the weights in `queue`.
    queued_rows: usize,
    /// Whether a transaction is in flight: at most one at a time, because
    /// SQLite has one writer and ordering of commits must follow arrival.
    committing: bool,
    max_batch: usize,
    max_queue: usize,
    metrics: Metrics,
    /// Where each commit's changes go, once, in commit order.
    broadcaster: Broadcaster,
}

impl DbActor {
    /// Returns a DB actor over `store` with the given bounds.
    pub fn new(
        store: Store,
        max_batch: usize,
        max_queue: usize,
        metrics: Metrics,
        broadcaster: Broadcaster,
    ) -> Self {
        DbActor {
            store,
            queue: VecDeque::new(),
            queued_rows: 0,
            committing: false,
            max_batch,
            max_queue,
            metrics,
            broadcaster,
        }
    }

    /// Starts a commit of the oldest queued ops, if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some(next) = self.queue.front() {
            let weight = next.op.weight();
            if !batch.is_empty() && rows + weight > self.max_batch {
                break;
            }
            rows += weight;
            if let Some(queued) = self.queue.pop_front() {
                batch.push(queued);
            }
        }
        self.queued_rows -= rows;
        self.metrics.db_queue_depth.set(self.queued_rows as i64);
        self.committing = true;
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let commit = async move {
            let started = Instant::now();
            let ops: Vec<&WriteOp> = batch.iter().map(|queued| &queued.op).collect();
            let result = store.commit(&ops, now_ms()).await;
            metrics
                .db_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.db_batch_rows.observe(rows as f64);
            (batch, result)
        };
        ctx.spawn(commit.into_actor(self).map(|(batch, result), actor, ctx| {
            actor.committing = false;
            match result {
                Ok(outcomes) => {
                    // Publish before replying: a dashboard may see a change a
                    // moment before the provider gets its 200, never after.
                    if actor.broadcaster.has_subscribers() {
                        let writes = batch.iter().zip(&outcomes).filter_map(|(queued, outcome)| {
                            match queued.op {
                                WriteOp::Apply { campaign_pk, .. } | WriteOp::Register { campaign_pk, .. } => {
                                    Some((campaign_pk, outcome))
                                }
                                _ => None,
                            }
                        });
                        if let Some(update) = CommitUpdate::from_outcomes(writes) {
                            actor.broadcaster.publish(update);
                        }
                    }
                    for (queued, outcome) in batch.into_iter().zip(outcomes) {
                        // The webhook may have gone away; nothing to do then.
                        let _ = queued.reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, source = ?std::error::Error::source(&error), "commit failed");
                    actor.metrics.db_commit_failures.inc();
                    for queued in batch {
                        let _ = queued.reply.send(Err(HubError::Unavailable));
                    }
                }
            }
            actor.flush(ctx);
        }));
    }
}

impl Actor for DbActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<Persist> for DbActor {
    type Result = ResponseFuture<Result<OpOutcome, HubError>>;

    /// Handler for `Persist`: queues the op (or refuses it when the queue is
    /// full) and resolves once its batch has committed.
    fn handle(&mut self, Persist(op): Persist, ctx: &mut Self::Context) -> Self::Result {
        let weight = op.weight();
        if self.queued_rows + weight > self.max_queue && !self.queue.is_empty() {
            self.metrics.db_queue_rejections.inc();
            return Box::pin(async { Err(HubError::Overloaded) });
        }
        let (reply, outcome) = oneshot::channel();
        self.queue.push_back(Queued { op, reply });
        self.queued_rows += weight;
        self.metrics.db_queue_depth.set(self.queued_rows as i64);
        self.flush(ctx);
        Box::pin(async move { outcome.await.unwrap_or(Err(HubError::Unavailable)) })
    }
}

impl Handler<QueueDepth> for DbActor {
    type Result = usize;

    /// Handler for `QueueDepth`: returns the rows waiting for a commit.
    fn handle(&mut self, _: QueueDepth, _: &mut Self::Context) -> usize {
        self.queued_rows
    }
}
