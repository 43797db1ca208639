//! The campaign actor: one per active campaign. It serializes the
//! campaign's writes and owns its live counters.
//!
//! Writes are serialized by sending them to the DB actor in groups, one
//! group in flight at a time: everything that arrives while a group commits
//! goes out together as the next group, right after it. A hot campaign thus
//! never has two of its commits racing, and under load its writes reach the
//! DB actor already batched. Transitions themselves are computed by the store
//! inside the commit, from the rows read there (see [`crate::store`]); the
//! actor keeps the counters each commit returns, so reads of a campaign's
//! metrics never touch the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::HubError;
use super::db_actor::DbActor;
use super::messages::{ApplyUpdates, GetCounters, Persist, RegisterMessages, Stopped};
use super::router::Router;
use crate::domain::CampaignCounters;
use crate::store::{OpOutcome, RegisterReceipt, Store, UpdateOutcome, WriteOp};

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A write waiting for the next group, and where its outcome goes.
#[derive(Debug)]
struct Queued {
    op: WriteOp,
    reply: oneshot::Sender<Result<OpOutcome, HubError>>,
}

/// The campaign actor. See the module docs.
#[derive(Debug)]
pub struct CampaignActor {
    campaign_pk: i64,
    /// Number the router gave this actor; echoed in `Stopped`.
    generation: u64,
    /// Committed counters; `None` until hydrated from the store in
    /// `started` (the mailbox waits for that, so no message sees `None`).
    counters: Option<Arc<CampaignCounters>>,
    store: Store,
    db: Addr<DbActor>,
    router: Addr<Router>,
    /// Writes that arrived while a group was committing; sent as the next
    /// group. Bounded by the webhooks in flight, which the HTTP server bounds.
    queue: Vec<Queued>,
    /// Whether a group is at the DB actor: at most one at a time.
    committing: bool,
    /// Last time a message arrived; the actor stops after `idle_timeout`
    /// without one and with nothing queued or committing.
    last_activity: Instant,
    idle_timeout: Duration,
}

impl CampaignActor {
    /// Returns an actor for `campaign_pk`; it hydrates itself when started.
    pub fn new(
        campaign_pk: i64,
        generation: u64,
        store: Store,
        db: Addr<DbActor>,
        router: Addr<Router>,
        idle_timeout: Duration,
    ) -> Self {
        CampaignActor {
            campaign_pk,
            generation,
            counters: None,
            store,
            db,
            router,
            queue: Vec::new(),
            committing: false,
            last_activity: Instant::now(),
            idle_timeout,
        }
    }

    /// Takes committed counters if they are newer than the ones held.
    fn absorb(&mut self, counters: &Option<Arc<CampaignCounters>>) {
        let (Some(new), Some(held)) = (counters, &self.counters) else {
            return;
        };
        if new.version > held.version {
            self.counters = Some(new.clone());
        }
    }

    /// Queues `op` for the next group and returns where its outcome arrives.
    fn enqueue(
        &mut self,
        op: WriteOp,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<OpOutcome, HubError>> {
        self.last_activity = Instant::now();
        let (reply, outcome) = oneshot::channel();
        self.queue.push(Queued { op, reply });
        self.send_group(ctx);
        outcome
    }

    /// Sends every queued write to the DB actor as one group, unless a group
    /// is already committing; when it is done, sends the next.
    fn send_group(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        self.committing = true;
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .map(|queued| (queued.op, queued.reply))
            .unzip();
        // Sent back to back, so the DB actor takes them into the same commit.
        let sent = join_all(ops.into_iter().map(|op| self.db.send(Persist(op))));
        ctx.spawn(sent.into_actor(self).map(move |results, actor, ctx| {
            actor.committing = false;
            actor.last_activity = Instant::now();
            for (result, reply) in results.into_iter().zip(replies) {
                let outcome = result.unwrap_or(Err(HubError::Unavailable));
                if let Ok(
                    OpOutcome::Applied { counters, .. } | OpOutcome::Registered { counters, .. },
                ) = &outcome
                {
                    actor.absorb(counters);
                }
                // The caller may have gone away; nothing to do then.
                let _ = reply.send(outcome);
            }
            actor.send_group(ctx);
        }));
    }
}

impl Actor for CampaignActor {
    type Context = Context<Self>;

    /// Hydrates the counters before any message is handled (`ctx.wait`
    /// holds the mailbox), then starts the idle check.
    fn started(&mut self, ctx: &mut Self::Context) {
        let store = self.store.clone();
        let campaign_pk = self.campaign_pk;
        let hydrate = async move { store.campaign_counters(campaign_pk).await };
        ctx.wait(hydrate.into_actor(self).map(|result, actor, ctx| match result {
            Ok(Some(counters)) => actor.counters = Some(Arc::new(counters)),
            Ok(None) => {
                tracing::warn!(campaign_pk = actor.campaign_pk, "campaign not found; stopping its actor");
                ctx.stop();
            }
            Err(error) => {
                tracing::error!(campaign_pk = actor.campaign_pk, error = %error, "failed to hydrate counters");
                ctx.stop();
            }
        }));
        ctx.run_interval(IDLE_CHECK_INTERVAL.min(self.idle_timeout), |actor, ctx| {
            let busy = actor.committing || !actor.queue.is_empty();
            if !busy && actor.last_activity.elapsed() >= actor.idle_timeout {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.router.do_send(Stopped {
            campaign_pk: self.campaign_pk,
            generation: self.generation,
        });
    }
}

impl Handler<ApplyUpdates> for CampaignActor {
    type Result = ResponseFuture<Result<Vec<UpdateOutcome>, HubError>>;

    /// Handler for `ApplyUpdates`: queues the updates for the campaign's next
    /// group; replies with one outcome per update once they are committed.
    fn handle(&mut self, message: ApplyUpdates, ctx: &mut Self::Context) -> Self::Result {
        let op = WriteOp::Apply {
            campaign_pk: self.campaign_pk,
            updates: message.updates,
        };
        let outcome = self.enqueue(op, ctx);
        Box::pin(async move {
            match outcome.await.unwrap_or(Err(HubError::Unavailable))? {
                OpOutcome::Applied { outcomes, .. } => Ok(outcomes),
                other => Err(HubError::Unexpected(format!(
                    "apply answered with {other:?}"
                ))),
            }
        })
    }
}

impl Handler<RegisterMessages> for CampaignActor {
    type Result = ResponseFuture<Result<RegisterReceipt, HubError>>;

    /// Handler for `RegisterMessages`: queues the registration (buffered
    /// statuses of the messages are applied in the same transaction);
    /// replies once committed.
    fn handle(&mut self, message: RegisterMessages, ctx: &mut Self::Context) -> Self::Result {
        let op = WriteOp::Register {
            campaign_pk: self.campaign_pk,
            messages: message.messages,
        };
        let outcome = self.enqueue(op, ctx);
        Box::pin(async move {
            match outcome.await.unwrap_or(Err(HubError::Unavailable))? {
                OpOutcome::Registered { receipt, .. } => Ok(receipt),
                other => Err(HubError::Unexpected(format!(
                    "register answered with {other:?}"
                ))),
            }
        })
    }
}

impl Handler<GetCounters> for CampaignActor {
    type Result = MessageResult<GetCounters>;

    /// Handler for `GetCounters`: returns the committed counters (`None`
    /// only if hydration failed and the actor is stopping).
    fn handle(&mut self, _: GetCounters, _: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        MessageResult(self.counters.as_deref().cloned())
    }
}
