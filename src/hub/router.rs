//! The router: finds the actor of a campaign, starting it when needed, and
//! forgets actors that stopped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;

use super::campaign_actor::CampaignActor;
use super::db_actor::DbActor;
use crate::metrics::Metrics;
use crate::store::Store;

/// Asks the router for the address of a campaign's actor, starting it if
/// needed.
#[derive(Message, Debug)]
#[rtype(result = "Addr<super::campaign_actor::CampaignActor>")]
pub struct Locate {
    pub campaign_pk: i64,
}

/// Tells the router a campaign actor stopped, so it can forget the address.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Stopped {
    pub campaign_pk: i64,
    pub generation: u64,
}

/// Asks the router how many campaign actors are running.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct CountActive;

/// Tells a campaign's actor, if one runs here, of counters committed
/// (possibly by another instance): it keeps them if they are newer.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Observe {
    pub campaign_pk: i64,
    pub counters: std::sync::Arc<crate::domain::CampaignCounters>,
}

/// The addresses of the running campaign actors, readable from every HTTP
/// worker: the hub sends a webhook's updates straight to its campaign's
/// actor, and asks the router (one more round trip to the actor thread)
/// only when the campaign has no running actor. Only the router writes it.
#[derive(Clone, Debug, Default)]
pub struct Addresses(Arc<RwLock<HashMap<i64, Addr<CampaignActor>>>>);

impl Addresses {
    /// The campaign's running actor, if there is one.
    pub fn get(&self, campaign_pk: i64) -> Option<Addr<CampaignActor>> {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&campaign_pk)
            .filter(|addr| addr.connected())
            .cloned()
    }

    fn set(&self, campaign_pk: i64, addr: Option<Addr<CampaignActor>>) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match addr {
            Some(addr) => map.insert(campaign_pk, addr),
            None => map.remove(&campaign_pk),
        };
    }
}

/// The router actor. It is the only place campaign actors are started, so
/// there is never more than one actor per campaign in this process.
#[derive(Debug)]
pub struct Router {
    /// Live campaign actors by campaign key. An entry whose actor stopped is
    /// replaced on the next `Locate` (and removed on `Stopped`).
    actors: HashMap<i64, (u64, Addr<CampaignActor>)>,
    /// Number given to the next actor started, so a late `Stopped` from an
    /// old actor never removes its successor.
    next_generation: u64,
    /// Given to each campaign actor, which reads its counters once.
    store: Store,
    /// Given to each campaign actor, which commits through it.
    db: Addr<DbActor>,
    /// Idle time after which a campaign actor stops.
    idle_timeout: Duration,
    /// The running campaign actors gauge.
    metrics: Metrics,
    /// The live actors' addresses, shared with the hub.
    addresses: Addresses,
}

impl Router {
    /// Returns a router that starts campaign actors over `store` and `db`.
    pub fn new(
        store: Store,
        db: Addr<DbActor>,
        idle_timeout: Duration,
        metrics: Metrics,
        addresses: Addresses,
    ) -> Self {
        Router {
            actors: HashMap::new(),
            next_generation: 0,
            store,
            db,
            idle_timeout,
            metrics,
            addresses,
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Locate> for Router {
    type Result = MessageResult<Locate>;

    /// Handler for `Locate`: returns the campaign's live actor, starting one
    /// (which hydrates itself) if there is none.
    fn handle(&mut self, Locate { campaign_pk }: Locate, ctx: &mut Self::Context) -> Self::Result {
        if let Some((_, addr)) = self
            .actors
            .get(&campaign_pk)
            .filter(|(_, addr)| addr.connected())
        {
            return MessageResult(addr.clone());
        }
        self.next_generation += 1;
        let actor = CampaignActor::new(
            campaign_pk,
            self.next_generation,
            self.store.clone(),
            self.db.clone(),
            ctx.address(),
            self.idle_timeout,
        );
        let addr = actor.start();
        self.actors
            .insert(campaign_pk, (self.next_generation, addr.clone()));
        self.addresses.set(campaign_pk, Some(addr.clone()));
        self.metrics
            .active_campaign_actors
            .set(self.actors.len() as i64);
        MessageResult(addr)
    }
}

impl Handler<Stopped> for Router {
    type Result = ();

    /// Handler for `Stopped`: forgets the actor unless a newer one took its place.
    fn handle(
        &mut self,
        Stopped {
            campaign_pk,
            generation,
        }: Stopped,
        _: &mut Self::Context,
    ) {
        if self
            .actors
            .get(&campaign_pk)
            .is_some_and(|(live, _)| *live == generation)
        {
            self.actors.remove(&campaign_pk);
            self.addresses.set(campaign_pk, None);
        }
        self.metrics
            .active_campaign_actors
            .set(self.actors.len() as i64);
    }
}

impl Handler<Observe> for Router {
    type Result = ();

    /// Handler for `Observe`: forwards to the campaign's actor, if any; an
    /// actor started later reads the counters from the store.
    fn handle(&mut self, observe: Observe, _: &mut Self::Context) {
        if let Some((_, addr)) = self.actors.get(&observe.campaign_pk) {
            addr.do_send(super::campaign_actor::Absorb(observe.counters));
        }
    }
}

impl Handler<CountActive> for Router {
    type Result = usize;

    /// Handler for `CountActive`: returns how many campaign actors are live.
    fn handle(&mut self, _: CountActive, _: &mut Self::Context) -> usize {
        self.actors
            .values()
            .filter(|(_, addr)| addr.connected())
            .count()
    }
}
