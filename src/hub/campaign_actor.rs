//! The campaign actor: one per active campaign. It serializes the
//! campaign's writes and owns its live counters.
//!
//! Writes go to the DB actor as they arrive, each with its reply; the DB
//! actor commits in arrival order, so the campaign's writes commit in the
//! order this actor received them, and under load they share commits.
//! Transitions themselves are computed by the store
//! inside the commit, from the rows read there (see [`crate::store`]); the
//! actor keeps the counters each commit returns, so reads of a campaign's
//! metrics never touch the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{BoxFuture, join_all};
use tokio::sync::oneshot;

use super::db_actor::Persist;
use super::db_actor::{DbActor, Reply};
use super::error::HubError;
use super::group::OneInFlight;
use super::router::Router;
use super::router::Stopped;
use crate::domain::{CampaignCounters, Channel, StatusUpdate};
use crate::store::{
    Applied, Apply, NewMessage, Register, RegisterReceipt, Registered, Store, UpdateOutcome,
};

/// Groups of one campaign out at the DB actor at once: in effect no limit
/// (the DB actor bounds what waits for a commit, `STATUSHUB_MAX_QUEUE`).
/// With one, then two, a new group left the moment a commit ended, holding
/// only the first webhook that arrived after it: about a third of the
/// commits of a hot campaign carried a single status, each paying a whole
/// transaction (`statushub_db_batch_rows`, `BENCHMARKS.md`). Order needs no
/// limit: the DB actor commits first in, first out.
const GROUPS_IN_FLIGHT: usize = usize::MAX;

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Asks a campaign actor to apply updates to messages of its campaign;
/// replies after they are committed.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<UpdateOutcome>, HubError>")]
pub struct ApplyUpdates {
    /// `(message_pk, update)` pairs, all of this actor's campaign.
    pub updates: Vec<(i64, Arc<StatusUpdate>)>,
}

/// Asks a campaign actor to register messages; replies after commit with
/// the receipt and the campaign's registered messages (see
/// [`Registered::messages`]).
#[derive(Message, Debug)]
#[rtype(result = "Result<(RegisterReceipt, Vec<(Channel, String, i64)>), HubError>")]
pub struct RegisterMessages {
    pub messages: Vec<NewMessage>,
}

/// Asks a campaign actor for its current counters.
#[derive(Message, Debug)]
#[rtype(result = "Option<CampaignCounters>")]
pub struct GetCounters;

/// Committed counters of this campaign, seen by the change feed (another
/// instance's commit, or this one's): kept if newer than those held.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Absorb(pub Arc<CampaignCounters>);

/// A write of this campaign waiting for the next group, with its reply.
#[derive(Debug)]
enum CampaignWrite {
    Apply(Apply, Reply<Applied>),
    Register(Register, Reply<Registered>),
}

/// A write of the group in flight, committed (or not), with its reply.
enum Settled {
    Apply(Result<Applied, HubError>, Reply<Applied>),
    Register(Result<Registered, HubError>, Reply<Registered>),
}

/// The campaign actor. See the module docs.
#[derive(Debug)]
pub struct CampaignActor {
    /// The campaign this actor serializes.
    campaign_pk: i64,
    /// Number the router gave this actor; echoed in `Stopped`.
    generation: u64,
    /// Committed counters; `None` until hydrated from the store in
    /// `started` (the mailbox waits for that, so no message sees `None`).
    counters: Option<Arc<CampaignCounters>>,
    /// Reads the counters once, when the actor starts.
    store: Store,
    /// Where the campaign's writes are committed.
    db: Addr<DbActor>,
    /// Told when this actor stops, so it forgets the address.
    router: Addr<Router>,
    /// Writes waiting for the next group, [`GROUPS_IN_FLIGHT`] groups at the
    /// DB actor at a time. Bounded by the webhooks in flight, which the HTTP
    /// server bounds.
    queue: OneInFlight<CampaignWrite>,
    /// Last time a message arrived; the actor stops after `idle_timeout`
    /// without one and with nothing queued or committing.
    last_activity: Instant,
    /// Idle time after which the actor stops.
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
            queue: OneInFlight::with_limit(GROUPS_IN_FLIGHT),
            last_activity: Instant::now(),
            idle_timeout,
        }
    }

    /// Takes committed counters if they are newer than the ones held.
    fn absorb(&mut self, counters: &Arc<CampaignCounters>) {
        let Some(held) = &self.counters else {
            return;
        };
        if counters.version > held.version {
            self.counters = Some(Arc::clone(counters));
        }
    }

    /// Queues a write for the next group.
    fn enqueue(&mut self, write: CampaignWrite, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        self.queue.push(write, 1);
        self.send_group(ctx);
    }

    /// Sends every queued write to the DB actor as one group, unless
    /// [`GROUPS_IN_FLIGHT`] groups are out; when one is done, sends the next.
    fn send_group(&mut self, ctx: &mut Context<Self>) {
        let Some((group, _)) = self.queue.next_group(usize::MAX) else {
            return;
        };
        // Sent back to back, so the DB actor takes them into the same commit.
        let sent: Vec<BoxFuture<'static, Settled>> = group
            .into_iter()
            .map(|write| -> BoxFuture<'static, Settled> {
                match write {
                    CampaignWrite::Apply(apply, reply) => {
                        let sent = self.db.send(Persist(apply));
                        Box::pin(async move {
                            Settled::Apply(sent.await.unwrap_or(Err(HubError::Unavailable)), reply)
                        })
                    }
                    CampaignWrite::Register(register, reply) => {
                        let sent = self.db.send(Persist(register));
                        Box::pin(async move {
                            let result = sent.await.unwrap_or(Err(HubError::Unavailable));
                            Settled::Register(result, reply)
                        })
                    }
                }
            })
            .collect();
        ctx.spawn(join_all(sent).into_actor(self).map(|settled, actor, ctx| {
            actor.queue.finish();
            actor.last_activity = Instant::now();
            // Counters first, replies after: a caller that reads the metrics
            // once answered sees its own change.
            for each in settled {
                match each {
                    Settled::Apply(result, reply) => {
                        if let Ok(applied) = &result {
                            actor.absorb(&applied.counters);
                        }
                        let _ = reply.send(result);
                    }
                    Settled::Register(result, reply) => {
                        if let Ok(registered) = &result {
                            actor.absorb(&registered.counters);
                        }
                        let _ = reply.send(result);
                    }
                }
            }
            actor.send_group(ctx);
        }));
    }
}

/// Waits for a queued write's outcome.
async fn settled<T>(outcome: oneshot::Receiver<Result<T, HubError>>) -> Result<T, HubError> {
    outcome.await.unwrap_or(Err(HubError::Unavailable))
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
            if actor.queue.is_idle() && actor.last_activity.elapsed() >= actor.idle_timeout {
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
        let apply = Apply {
            campaign_pk: self.campaign_pk,
            updates: message.updates,
        };
        let (reply, outcome) = oneshot::channel();
        self.enqueue(CampaignWrite::Apply(apply, reply), ctx);
        Box::pin(async move { settled(outcome).await.map(|applied| applied.outcomes) })
    }
}

impl Handler<RegisterMessages> for CampaignActor {
    type Result = ResponseFuture<Result<(RegisterReceipt, Vec<(Channel, String, i64)>), HubError>>;

    /// Handler for `RegisterMessages`: queues the registration (buffered
    /// statuses of the messages are applied in the same transaction);
    /// replies once committed.
    fn handle(&mut self, message: RegisterMessages, ctx: &mut Self::Context) -> Self::Result {
        let register = Register {
            campaign_pk: self.campaign_pk,
            messages: message.messages,
        };
        let (reply, outcome) = oneshot::channel();
        self.enqueue(CampaignWrite::Register(register, reply), ctx);
        Box::pin(async move {
            settled(outcome)
                .await
                .map(|registered| (registered.receipt, registered.messages))
        })
    }
}

impl Handler<Absorb> for CampaignActor {
    type Result = ();

    /// Handler for `Absorb`: keeps the counters if they are newer.
    fn handle(&mut self, Absorb(counters): Absorb, _: &mut Self::Context) {
        self.absorb(&counters);
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
