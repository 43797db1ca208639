//! The campaign actor: one per active campaign. It serializes the
//! campaign's writes, owns its live counters and is the point every change
//! of the campaign passes through after commit.
//!
//! Transitions themselves are computed by the store inside the commit, from
//! the rows read there (see [`crate::store`]); the actor keeps the counters
//! the commits return, so reads of a hot campaign's metrics never touch the
//! database, and it never has to trust a stale copy of a message.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::HubError;
use super::db_actor::DbActor;
use super::messages::{ApplyUpdates, GetCounters, Persist, RegisterMessages, Stopped};
use super::router::Router;
use std::sync::Arc;

use crate::domain::CampaignCounters;
use crate::sse::{Broadcaster, CampaignUpdate};
use crate::store::{
    CounterRow, OpOutcome, RegisterReceipt, StatusChange, Store, UpdateOutcome, WriteOp, format_ms,
};

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The campaign actor. See the module docs.
#[derive(Debug)]
pub struct CampaignActor {
    campaign_pk: i64,
    /// Number the router gave this actor; echoed in `Stopped`.
    generation: u64,
    /// Committed counters; `None` until hydrated from the store in
    /// `started` (the mailbox waits for that, so no message sees `None`).
    counters: Option<CampaignCounters>,
    store: Store,
    db: Addr<DbActor>,
    router: Addr<Router>,
    /// Last time a message arrived; the actor stops after `idle_timeout`
    /// without one and with nothing in flight.
    last_activity: Instant,
    /// Writes sent to the DB actor and not yet answered: the actor never
    /// stops while one is in flight, so a reply always finds it.
    in_flight: usize,
    idle_timeout: Duration,
    /// Where committed changes go to live subscribers.
    broadcaster: Broadcaster,
}

impl CampaignActor {
    /// Returns an actor for `campaign_pk`; it hydrates itself when started.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        campaign_pk: i64,
        generation: u64,
        store: Store,
        db: Addr<DbActor>,
        router: Addr<Router>,
        idle_timeout: Duration,
        broadcaster: Broadcaster,
    ) -> Self {
        CampaignActor {
            campaign_pk,
            generation,
            counters: None,
            store,
            db,
            router,
            last_activity: Instant::now(),
            in_flight: 0,
            idle_timeout,
            broadcaster,
        }
    }

    /// Takes committed counters if they are newer than the ones held.
    /// Every commit that changes the campaign raises its version, and
    /// replies of concurrent writes may arrive out of order.
    fn absorb(&mut self, row: Option<CounterRow>) {
        let (Some(row), Some(counters)) = (row, self.counters.as_mut()) else {
            return;
        };
        if row.version <= counters.version {
            return;
        }
        *counters = CampaignCounters::from_tally(
            &counters.tenant_id,
            &counters.campaign_id,
            row.version,
            &row.tally,
            format_ms(row.updated_at_ms),
        );
    }

    /// Takes a commit's counters and publishes its changes to subscribers.
    fn committed(&mut self, counters: Option<CounterRow>, changes: Vec<StatusChange>) {
        let before = self.counters.as_ref().map(|counters| counters.version);
        self.absorb(counters);
        let Some(counters) = &self.counters else {
            return;
        };
        if changes.is_empty() && before == Some(counters.version) {
            return;
        }
        self.broadcaster.publish(CampaignUpdate {
            campaign_pk: self.campaign_pk,
            counters: Arc::new(counters.clone()),
            changes,
        });
    }

    /// Sends `op` to the DB actor and hands its outcome to `then` in the
    /// actor's context, without blocking the mailbox meanwhile.
    fn persist<T: 'static>(
        &mut self,
        op: WriteOp,
        then: impl FnOnce(&mut Self, OpOutcome) -> Result<T, HubError> + 'static,
    ) -> ResponseActFuture<Self, Result<T, HubError>> {
        self.last_activity = Instant::now();
        self.in_flight += 1;
        let request = self.db.send(Persist(op));
        Box::pin(request.into_actor(self).map(move |result, actor, _| {
            actor.in_flight -= 1;
            actor.last_activity = Instant::now();
            match result {
                Ok(Ok(outcome)) => then(actor, outcome),
                Ok(Err(error)) => Err(error),
                Err(_mailbox) => Err(HubError::Unavailable),
            }
        }))
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
            Ok(Some(counters)) => actor.counters = Some(counters),
            Ok(None) => {
                tracing::warn!(campaign_pk = actor.campaign_pk, "campaign not found; stopping its actor");
                ctx.stop();
            }
            Err(error) => {
                tracing::error!(campaign_pk = actor.campaign_pk, error = %error, "failed to hydrate counters");
                ctx.stop();
            }
        }));
        ctx.run_interval(IDLE_CHECK_INTERVAL, |actor, ctx| {
            if actor.in_flight == 0 && actor.last_activity.elapsed() >= actor.idle_timeout {
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
    type Result = ResponseActFuture<Self, Result<Vec<UpdateOutcome>, HubError>>;

    /// Handler for `ApplyUpdates`: persists the updates and, after commit,
    /// takes the new counters; replies with one outcome per update.
    fn handle(&mut self, message: ApplyUpdates, _: &mut Self::Context) -> Self::Result {
        let op = WriteOp::Apply {
            campaign_pk: self.campaign_pk,
            updates: message.updates,
        };
        self.persist(op, |actor, outcome| match outcome {
            OpOutcome::Applied {
                outcomes,
                counters,
                changes,
            } => {
                actor.committed(counters, changes);
                Ok(outcomes)
            }
            other => Err(HubError::Unexpected(format!(
                "apply answered with {other:?}"
            ))),
        })
    }
}

impl Handler<RegisterMessages> for CampaignActor {
    type Result = ResponseActFuture<Self, Result<RegisterReceipt, HubError>>;

    /// Handler for `RegisterMessages`: persists the messages (applying their
    /// buffered statuses in the same transaction) and takes the new counters.
    fn handle(&mut self, message: RegisterMessages, _: &mut Self::Context) -> Self::Result {
        let op = WriteOp::Register {
            campaign_pk: self.campaign_pk,
            messages: message.messages,
        };
        self.persist(op, |actor, outcome| match outcome {
            OpOutcome::Registered {
                receipt,
                counters,
                changes,
            } => {
                actor.committed(counters, changes);
                Ok(receipt)
            }
            other => Err(HubError::Unexpected(format!(
                "register answered with {other:?}"
            ))),
        })
    }
}

impl Handler<GetCounters> for CampaignActor {
    type Result = MessageResult<GetCounters>;

    /// Handler for `GetCounters`: returns the committed counters (`None`
    /// only if hydration failed and the actor is stopping).
    fn handle(&mut self, _: GetCounters, _: &mut Self::Context) -> Self::Result {
        self.last_activity = Instant::now();
        MessageResult(self.counters.clone())
    }
}
