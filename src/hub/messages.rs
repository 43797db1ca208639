//! Every message the hub's actors exchange, each with its reply type.

use actix::prelude::*;

use super::HubError;
use super::db_actor::Write;
use crate::domain::{CampaignCounters, StatusUpdate};
use crate::store::{NewMessage, RegisterReceipt, UpdateOutcome};

/// Asks the DB actor to commit a write with the next batch; replies with
/// the write's own outcome type once the transaction holding it committed.
#[derive(Debug)]
pub struct Persist<W: Write>(pub W);

impl<W: Write> Message for Persist<W> {
    type Result = Result<W::Outcome, HubError>;
}

/// Asks a campaign actor to apply updates to messages of its campaign;
/// replies after they are committed.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<UpdateOutcome>, HubError>")]
pub struct ApplyUpdates {
    /// `(message_pk, update)` pairs, all of this actor's campaign.
    pub updates: Vec<(i64, StatusUpdate)>,
}

/// Asks a campaign actor to register messages; replies after commit.
#[derive(Message, Debug)]
#[rtype(result = "Result<RegisterReceipt, HubError>")]
pub struct RegisterMessages {
    pub messages: Vec<NewMessage>,
}

/// Asks a campaign actor for its current counters.
#[derive(Message, Debug)]
#[rtype(result = "Option<CampaignCounters>")]
pub struct GetCounters;

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

/// Asks the DB actor how many statuses wait for a commit.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct QueueDepth;
