//! The hub: routes verified updates to campaign actors, which persist them
//! through the DB actor, and publishes what each commit changed.
//!
//! ```text
//! handler ──Hub::apply──▶ resolve ids (read) ──▶ CampaignActor (per campaign) ──Persist──▶ DbActor ──▶ commit
//!    ▲                         │ unknown ids ────────────Persist(Buffer)──────────────────────▲          │
//!    └──────── receipt, after every commit holding the call's updates ◀────────────────────────┘          ▼
//!                                                                                  broadcast (once per commit)
//! ```
//!
//! [`Hub`] is the cloneable handle the HTTP layer holds; actors stay behind
//! it. The only import circle in the crate is here, and inherent: the router
//! starts campaign actors, which tell it when they stop.

pub mod broadcast;
mod campaign_actor;
mod coalesce;
mod db_actor;
mod directory;
mod error;
mod follower;
mod group;
mod router;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;

pub use broadcast::{
    Broadcaster, ChangedSeries, CommitUpdate, FanoutSettings, Follow, IncomingEvent, Live,
    PublishedCampaign, PublishedChange, StatusBatch, Subscription,
};
pub use campaign_actor::CampaignActor;
pub use db_actor::{DbActor, Write};
pub use directory::Directory;
pub use error::HubError;
pub use router::{Addresses, Router};

use crate::domain::{CampaignCounters, Channel, StatusUpdate};
use crate::metrics::Metrics;
use crate::store::{
    Buffer, DeadLetter, EnsureCampaign, MessageRef, NewMessage, Prune, PruneTarget, RecordReplay,
    RegisterReceipt, Store, StoreError, UpdateOutcome,
};
use campaign_actor::{ApplyUpdates, GetCounters, RegisterMessages};
use db_actor::{IsIdle, Persist, QueueDepth};
use router::{CountActive, Locate};

/// Updates split by where they go: known messages grouped by campaign
/// (`(message_pk, update)` pairs), and unknown ones.
type Routed = (
    HashMap<i64, Vec<(i64, Arc<StatusUpdate>)>>,
    Vec<Arc<StatusUpdate>>,
);

/// How many times an update is routed again when its message turned out to
/// be registered meanwhile, or its campaign actor stopped under it.
const MAX_REROUTES: usize = 3;

/// Rows one retention write deletes at most.
pub const PRUNE_BATCH: u32 = 1_000;

/// The reply to a webhook: what happened to the statuses it carried.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct WebhookReceipt {
    /// Statuses in the call.
    pub received: usize,
    /// Statuses recorded for a known message (whether or not they changed it).
    pub applied: usize,
    /// Statuses recorded before (same provider notification).
    pub duplicates: usize,
    /// Statuses for unknown message ids, buffered until registration.
    pub unmatched: usize,
    /// Parts of the call that could not be interpreted and went to dead letters.
    pub dead_lettered: usize,
}

/// What became of one update of a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Recorded for a known message.
    Applied,
    /// The same notification was recorded before.
    Duplicate,
    /// Buffered until its message is registered.
    Unmatched,
}

impl Settlement {
    /// The name the debug tail and the metrics use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Settlement::Applied => "applied",
            Settlement::Duplicate => "duplicate",
            Settlement::Unmatched => "unmatched",
        }
    }
}

/// The hub's bounds, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct HubSettings {
    /// Most rows in one commit; registrations are split to fit.
    pub max_batch: usize,
    /// Most rows waiting for a commit before writes are refused.
    pub max_queue: usize,
    /// Idle time after which a campaign actor stops.
    pub campaign_idle: Duration,
    /// Message ids whose campaign is kept in memory (0: none).
    pub directory_capacity: usize,
    /// Least time between two fan-outs of metrics to streams
    /// (`STATUSHUB_SSE_COALESCE_MS`).
    pub sse_coalesce: Duration,
}

/// The handle the HTTP layer holds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    /// Reads what routing needs (which campaign a message id belongs to)
    /// when the directory does not know it.
    store: Store,
    /// Which campaign known message ids belong to, in memory.
    directory: Arc<Directory>,
    /// Starts a campaign's actor when it has none.
    router: Addr<Router>,
    /// The running campaign actors, found without asking the router.
    addresses: Addresses,
    /// Commits every write.
    db: Addr<DbActor>,
    /// Counts statuses by outcome.
    metrics: Metrics,
    /// Where each commit's changes are published, and incoming events for
    /// the debug tail.
    broadcaster: Broadcaster,
    /// Most rows per write: registrations are split to fit.
    max_batch: usize,
}

impl Hub {
    /// Starts the DB actor and the router on the current actix system.
    ///
    /// With a change feed (a store several instances share), every commit,
    /// this instance's included, reaches subscribers through the feed, in
    /// the one order all instances agree on; without one (a store this
    /// process owns), the DB actor publishes each commit itself.
    pub async fn start(
        store: Store,
        metrics: Metrics,
        settings: HubSettings,
    ) -> Result<Self, StoreError> {
        let feed = store.feed_opener();
        let broadcaster = Broadcaster::new(
            FanoutSettings {
                window: settings.sse_coalesce,
                pressure_rows: settings.max_batch,
            },
            metrics.clone(),
        )?;
        let db = DbActor::new(
            store.clone(),
            settings.max_batch,
            settings.max_queue,
            metrics.clone(),
            feed.is_none().then(|| broadcaster.clone()),
        )
        .start();
        let addresses = Addresses::default();
        let router = Router::new(
            store.clone(),
            db.clone(),
            settings.campaign_idle,
            metrics.clone(),
            addresses.clone(),
        )
        .start();
        if let Some(feed) = feed {
            follower::spawn(feed, broadcaster.clone(), router.clone(), metrics.clone()).await?;
        }
        Ok(Hub {
            directory: Arc::new(Directory::new(settings.directory_capacity, metrics.clone())),
            store,
            router,
            addresses,
            db,
            metrics,
            broadcaster,
            max_batch: settings.max_batch,
        })
    }

    /// Returns the broadcast point streams subscribe to.
    pub fn broadcaster(&self) -> &Broadcaster {
        &self.broadcaster
    }

    /// Applies verified updates and returns the receipt once every one of
    /// them is durably committed (applied, recognised as duplicate, or
    /// buffered), with each update and what became of it.
    ///
    /// Each update is put behind an `Arc` once, here: the campaign actor,
    /// the DB actor's batch and the commit share it, and a retry (an actor
    /// that stopped, a message registered meanwhile) costs a reference
    /// count, not a copy.
    pub async fn apply(
        &self,
        updates: Vec<StatusUpdate>,
    ) -> Result<(WebhookReceipt, Vec<(Arc<StatusUpdate>, Settlement)>), HubError> {
        let mut receipt = WebhookReceipt {
            received: updates.len(),
            ..WebhookReceipt::default()
        };
        let mut settled = Vec::with_capacity(updates.len());
        let mut to_route: Vec<Arc<StatusUpdate>> = updates
            .into_iter()
            .map(|update| {
                // Made here, on the HTTP worker, not on the one writer
                // thread every commit waits for.
                let _ = update.stored_details();
                Arc::new(update)
            })
            .collect();
        for _ in 0..MAX_REROUTES {
            if to_route.is_empty() {
                break;
            }
            let (known, unknown) = self.resolve(to_route).await?;
            let calls = known
                .into_iter()
                .map(|(campaign_pk, updates)| self.apply_to_campaign(campaign_pk, updates));
            let buffered = async {
                if unknown.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let outcomes = self
                    .persist(Buffer {
                        updates: unknown.clone(),
                    })
                    .await?;
                Ok((unknown, outcomes))
            };
            let (results, buffered) = futures_util::join!(join_all(calls), buffered);
            let mut again = Vec::new();
            for result in results.into_iter().chain([buffered]) {
                let (updates, outcomes) = result?;
                settle(&mut receipt, &mut settled, &mut again, updates, outcomes);
            }
            to_route = again;
        }
        if !to_route.is_empty() {
            return Err(HubError::Unavailable);
        }
        for (outcome, count) in [
            (Settlement::Applied, receipt.applied),
            (Settlement::Duplicate, receipt.duplicates),
            (Settlement::Unmatched, receipt.unmatched),
        ] {
            self.metrics
                .statuses
                .with_label_values(&[outcome.as_str()])
                .inc_by(count as u64);
        }
        Ok((receipt, settled))
    }

    /// Stores a signed payload that could not be interpreted.
    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<(), HubError> {
        self.persist(letter).await?;
        self.metrics.dead_letters.inc();
        Ok(())
    }

    /// Records what a replay of dead letter `replay.id` did; returns
    /// whether the letter still exists. The statuses it carried were
    /// applied before, through [`Hub::apply`], like a webhook's.
    pub async fn record_replay(&self, replay: RecordReplay) -> Result<bool, HubError> {
        let outcome = replay.outcome.as_str();
        let found = self.persist(replay).await?;
        self.metrics
            .dead_letter_replays
            .with_label_values(&[outcome])
            .inc();
        Ok(found)
    }

    /// Counts a replay refused because its letter was not verified at
    /// receipt.
    pub fn count_refused_replay(&self) {
        self.metrics
            .dead_letter_replays
            .with_label_values(&["refused"])
            .inc();
    }

    /// Waits until no write is queued or committing, at most `limit`;
    /// returns whether it got there. Shutdown calls it once the HTTP server
    /// has stopped, before closing the store, so the last commits end
    /// before the pools close.
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.db.send(IsIdle).await {
                Ok(true) | Err(_) => return true,
                Ok(false) if tokio::time::Instant::now() >= deadline => return false,
                Ok(false) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Creates the tenant and campaign if needed and returns its key.
    pub async fn ensure_campaign(
        &self,
        tenant_id: &str,
        campaign_id: &str,
    ) -> Result<i64, HubError> {
        self.persist(EnsureCampaign {
            tenant_id: tenant_id.to_owned(),
            campaign_id: campaign_id.to_owned(),
        })
        .await
    }

    /// Registers messages of one campaign and applies their buffered
    /// statuses, in chunks of at most one batch each, so a large
    /// registration neither bypasses the batch bound nor holds the write
    /// path for one long transaction.
    pub async fn register(
        &self,
        campaign_pk: i64,
        messages: Vec<NewMessage>,
    ) -> Result<RegisterReceipt, HubError> {
        let mut total = RegisterReceipt::default();
        for chunk in messages.chunks(self.max_batch.max(1)) {
            let (receipt, registered) = self
                .on_campaign(campaign_pk, || RegisterMessages {
                    messages: chunk.to_vec(),
                })
                .await??;
            for (channel, id, message_pk) in &registered {
                self.directory.insert(
                    *channel,
                    id,
                    MessageRef {
                        message_pk: *message_pk,
                        campaign_pk,
                    },
                );
            }
            total += receipt;
        }
        Ok(total)
    }

    /// Returns a campaign's live counters (from its actor).
    pub async fn counters(&self, campaign_pk: i64) -> Result<CampaignCounters, HubError> {
        self.on_campaign(campaign_pk, || GetCounters)
            .await?
            .ok_or(HubError::Unavailable)
    }

    /// Deletes the rows of `target` older than `retention`, oldest first,
    /// [`PRUNE_BATCH`] rows per write: each batch is one small write
    /// committed with whatever else is queued, so pruning a large backlog
    /// never holds the write path. Returns how many rows went.
    pub async fn prune(&self, target: PruneTarget, retention: Duration) -> Result<u64, HubError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let older_than_ms = crate::clock::now_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            let removed = self
                .persist(Prune {
                    target,
                    older_than_ms,
                    limit: PRUNE_BATCH,
                })
                .await?;
            total += removed;
            if removed < u64::from(PRUNE_BATCH) {
                return Ok(total);
            }
            // Let webhooks queued meanwhile go first.
            tokio::task::yield_now().await;
        }
    }

    /// Returns how many campaign actors are running.
    pub async fn active_campaigns(&self) -> usize {
        self.router.send(CountActive).await.unwrap_or(0)
    }

    /// Returns how many rows wait for a commit.
    pub async fn queue_depth(&self) -> usize {
        self.db.send(QueueDepth).await.unwrap_or(0)
    }

    /// Commits `write` with the next batch and returns its outcome.
    async fn persist<W: Write>(&self, write: W) -> Result<W::Outcome, HubError> {
        self.db
            .send(Persist(write))
            .await
            .map_err(|_| HubError::Unavailable)?
    }

    /// Sends `message()` to the campaign's actor, starting it if needed; if
    /// the actor stopped between being found and being asked, finds (or
    /// starts) it again, a few times.
    async fn on_campaign<M>(
        &self,
        campaign_pk: i64,
        message: impl Fn() -> M,
    ) -> Result<M::Result, HubError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        CampaignActor: Handler<M>,
    {
        for _ in 0..MAX_REROUTES {
            let actor = match self.addresses.get(campaign_pk) {
                Some(actor) => actor,
                None => self
                    .router
                    .send(Locate { campaign_pk })
                    .await
                    .map_err(|_| HubError::Unavailable)?,
            };
            match actor.send(message()).await {
                Ok(result) => return Ok(result),
                // The actor stopped between `Locate` and `send`: locate again.
                Err(_stopped) => continue,
            }
        }
        Err(HubError::Unavailable)
    }

    /// Splits updates into known messages (grouped by campaign) and unknown
    /// ones. The directory answers for the ids it knows; the store is read
    /// only for the others, in one query per channel.
    async fn resolve(&self, updates: Vec<Arc<StatusUpdate>>) -> Result<Routed, HubError> {
        let mut known: HashMap<i64, Vec<(i64, Arc<StatusUpdate>)>> = HashMap::new();
        let mut missed = Vec::new();
        for update in updates {
            match self
                .directory
                .get(update.channel, &update.provider_message_id)
            {
                Some(message) => known
                    .entry(message.campaign_pk)
                    .or_default()
                    .push((message.message_pk, update)),
                None => missed.push(update),
            }
        }
        if missed.is_empty() {
            return Ok((known, missed));
        }
        let mut by_channel: HashMap<Channel, Vec<&str>> = HashMap::new();
        for update in &missed {
            by_channel
                .entry(update.channel)
                .or_default()
                .push(update.provider_message_id.as_str());
        }
        let mut refs: HashMap<Channel, HashMap<String, MessageRef>> = HashMap::new();
        for (channel, ids) in by_channel {
            let found = self.store.resolve(channel, &ids).await.map_err(|error| {
                tracing::error!(error = %error, "failed to resolve message ids");
                HubError::Unavailable
            })?;
            for (id, message) in &found {
                self.directory.insert(channel, id, *message);
            }
            refs.insert(channel, found.into_iter().collect());
        }
        let mut unknown = Vec::new();
        for update in missed {
            let found = refs
                .get(&update.channel)
                .and_then(|messages| messages.get(update.provider_message_id.as_str()));
            match found {
                Some(message) => known
                    .entry(message.campaign_pk)
                    .or_default()
                    .push((message.message_pk, update)),
                None => unknown.push(update),
            }
        }
        Ok((known, unknown))
    }

    async fn apply_to_campaign(
        &self,
        campaign_pk: i64,
        updates: Vec<(i64, Arc<StatusUpdate>)>,
    ) -> Result<(Vec<Arc<StatusUpdate>>, Vec<UpdateOutcome>), HubError> {
        let outcomes = self
            .on_campaign(campaign_pk, || ApplyUpdates {
                updates: updates.clone(),
            })
            .await??;
        Ok((
            updates.into_iter().map(|(_, update)| update).collect(),
            outcomes,
        ))
    }
}

/// Adds outcomes to the receipt and the settled list; updates whose
/// message became known are queued for another round.
fn settle(
    receipt: &mut WebhookReceipt,
    settled: &mut Vec<(Arc<StatusUpdate>, Settlement)>,
    again: &mut Vec<Arc<StatusUpdate>>,
    updates: Vec<Arc<StatusUpdate>>,
    outcomes: Vec<UpdateOutcome>,
) {
    for (update, outcome) in updates.into_iter().zip(outcomes) {
        let settlement = match outcome {
            UpdateOutcome::Applied { .. } => {
                receipt.applied += 1;
                Settlement::Applied
            }
            UpdateOutcome::Duplicate => {
                receipt.duplicates += 1;
                Settlement::Duplicate
            }
            UpdateOutcome::Buffered => {
                receipt.unmatched += 1;
                Settlement::Unmatched
            }
            UpdateOutcome::Known(_) => {
                again.push(update);
                continue;
            }
        };
        settled.push((update, settlement));
    }
}
