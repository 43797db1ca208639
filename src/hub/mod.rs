//! The hub: routes verified updates to campaign actors, which persist them
//! through the DB actor.
//!
//! ```text
//! handler ──Hub::apply──▶ resolve ids (read) ──▶ CampaignActor (per campaign) ──Persist──▶ DbActor ──▶ commit
//!    ▲                         │ unknown ids ────────────Persist(Buffer)──────────────────────▲
//!    └──────── receipt, after every commit holding the call's updates ◀───────────────────────┘
//! ```
//!
//! [`Hub`] is the cloneable handle the HTTP layer holds; actors stay behind it.

mod campaign_actor;
mod db_actor;
mod messages;
mod router;

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;

pub use campaign_actor::CampaignActor;
pub use db_actor::DbActor;
pub use router::Router;

use crate::domain::{CampaignCounters, Channel, StatusUpdate};
use crate::metrics::Metrics;
use crate::sse::{Broadcaster, IncomingEvent};
use crate::store::{
    DeadLetter, MessageRef, NewMessage, OpOutcome, PruneTarget, RegisterReceipt, Store,
    UpdateOutcome, WriteOp,
};
use messages::{
    ApplyUpdates, CountActive, GetCounters, Locate, Persist, QueueDepth, RegisterMessages,
};

/// How many times an update is routed again when its message turned out to
/// be registered meanwhile, or its campaign actor stopped under it.
const MAX_REROUTES: usize = 3;

/// Rows one retention op deletes at most.
pub const PRUNE_BATCH: u32 = 1_000;

/// Why the hub could not do what was asked. Every variant means "not
/// stored": callers answer 503 and providers retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the store is unavailable")]
    Unavailable,
    #[error("unexpected hub state: {0}")]
    Unexpected(String),
}

/// The reply to a webhook: what happened to the statuses it carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// The handle the HTTP layer holds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    store: Store,
    router: Addr<Router>,
    db: Addr<DbActor>,
    metrics: Metrics,
    broadcaster: Broadcaster,
    /// Most rows per write op: registrations are split to fit.
    max_batch: usize,
}

impl Hub {
    /// Starts the DB actor and the router on the current actix system.
    pub fn start(
        store: Store,
        max_batch: usize,
        max_queue: usize,
        idle_timeout: Duration,
        metrics: Metrics,
        broadcaster: Broadcaster,
    ) -> Self {
        let db = DbActor::new(
            store.clone(),
            max_batch,
            max_queue,
            metrics.clone(),
            broadcaster.clone(),
        )
        .start();
        let router = Router::new(store.clone(), db.clone(), idle_timeout, metrics.clone()).start();
        Hub {
            store,
            router,
            db,
            metrics,
            broadcaster,
            max_batch,
        }
    }

    /// Returns the broadcast point SSE streams subscribe to.
    pub fn broadcaster(&self) -> &Broadcaster {
        &self.broadcaster
    }

    /// Returns the store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies verified updates and returns the receipt once every one of
    /// them is durably committed (applied, recognised as duplicate, or
    /// buffered).
    pub async fn apply(&self, updates: Vec<StatusUpdate>) -> Result<WebhookReceipt, HubError> {
        let mut receipt = WebhookReceipt {
            received: updates.len(),
            ..WebhookReceipt::default()
        };
        let mut to_route = updates;
        for _ in 0..MAX_REROUTES {
            if to_route.is_empty() {
                break;
            }
            let (known, unknown) = self.resolve(to_route).await?;
            let mut again = Vec::new();
            let mut calls = Vec::new();
            for (campaign_pk, updates) in known {
                calls.push(self.apply_to_campaign(campaign_pk, updates));
            }
            let buffered = async {
                if unknown.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                match self
                    .persist(WriteOp::Buffer {
                        updates: unknown.clone(),
                    })
                    .await?
                {
                    OpOutcome::Buffered { outcomes } => Ok((unknown, outcomes)),
                    other => Err(HubError::Unexpected(format!(
                        "buffer answered with {other:?}"
                    ))),
                }
            };
            let (results, buffered) = futures_util::join!(join_all(calls), buffered);
            for result in results {
                let (updates, outcomes) = result?;
                self.count(&mut receipt, &mut again, updates, outcomes);
            }
            let (updates, outcomes) = buffered?;
            self.count(&mut receipt, &mut again, updates, outcomes);
            to_route = again;
        }
        if !to_route.is_empty() {
            return Err(HubError::Unavailable);
        }
        self.metrics
            .statuses
            .with_label_values(&["applied"])
            .inc_by(receipt.applied as u64);
        self.metrics
            .statuses
            .with_label_values(&["duplicate"])
            .inc_by(receipt.duplicates as u64);
        self.metrics
            .statuses
            .with_label_values(&["unmatched"])
            .inc_by(receipt.unmatched as u64);
        Ok(receipt)
    }

    /// Stores a signed payload that could not be interpreted.
    pub async fn dead_letter(&self, letter: DeadLetter) -> Result<(), HubError> {
        self.metrics.dead_letters.inc();
        let incoming = self
            .broadcaster
            .has_incoming_subscribers()
            .then(|| IncomingEvent {
                received_at: crate::store::format_ms(crate::store::now_ms()),
                channel: letter.channel.as_str().to_owned(),
                provider_message_id: None,
                event: None,
                status: None,
                outcome: "dead_letter",
                reason: Some(letter.reason.clone()),
            });
        self.persist(WriteOp::DeadLetter(letter)).await?;
        if let Some(event) = incoming {
            self.broadcaster.publish_incoming(event);
        }
        Ok(())
    }

    /// Creates the tenant and campaign if needed and returns its key.
    pub async fn ensure_campaign(
        &self,
        tenant_id: &str,
        campaign_id: &str,
    ) -> Result<i64, HubError> {
        let op = WriteOp::EnsureCampaign {
            tenant_id: tenant_id.to_owned(),
            campaign_id: campaign_id.to_owned(),
        };
        match self.persist(op).await? {
            OpOutcome::Campaign { campaign_pk } => Ok(campaign_pk),
            other => Err(HubError::Unexpected(format!(
                "ensure campaign answered with {other:?}"
            ))),
        }
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
            let receipt = self.register_chunk(campaign_pk, chunk).await?;
            total.registered += receipt.registered;
            total.existing += receipt.existing;
            total.applied_buffered += receipt.applied_buffered;
            total.conflicts.extend(receipt.conflicts);
        }
        Ok(total)
    }

    async fn register_chunk(
        &self,
        campaign_pk: i64,
        messages: &[NewMessage],
    ) -> Result<RegisterReceipt, HubError> {
        for _ in 0..MAX_REROUTES {
            let actor = self.locate(campaign_pk).await?;
            match actor
                .send(RegisterMessages {
                    messages: messages.to_vec(),
                })
                .await
            {
                Ok(result) => return result,
                Err(_stopped) => continue,
            }
        }
        Err(HubError::Unavailable)
    }

    /// Returns a campaign's live counters (from its actor).
    pub async fn counters(&self, campaign_pk: i64) -> Result<CampaignCounters, HubError> {
        for _ in 0..MAX_REROUTES {
            let actor = self.locate(campaign_pk).await?;
            match actor.send(GetCounters).await {
                Ok(Some(counters)) => return Ok(counters),
                Ok(None) | Err(_) => continue,
            }
        }
        Err(HubError::Unavailable)
    }

    /// Deletes the rows of `target` older than `retention`, oldest first,
    /// [`PRUNE_BATCH`] rows per operation: each batch is one small write op
    /// committed with whatever else is queued, so pruning a large backlog
    /// never holds the write path. Returns how many rows went.
    pub async fn prune(&self, target: PruneTarget, retention: Duration) -> Result<u64, HubError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let older_than_ms = crate::store::now_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            let op = WriteOp::Prune {
                target,
                older_than_ms,
                limit: PRUNE_BATCH,
            };
            let removed = match self.persist(op).await? {
                OpOutcome::Pruned { removed } => removed,
                other => {
                    return Err(HubError::Unexpected(format!(
                        "prune answered with {other:?}"
                    )));
                }
            };
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

    async fn persist(&self, op: WriteOp) -> Result<OpOutcome, HubError> {
        self.db
            .send(Persist(op))
            .await
            .map_err(|_| HubError::Unavailable)?
    }

    async fn locate(&self, campaign_pk: i64) -> Result<Addr<CampaignActor>, HubError> {
        self.router
            .send(Locate { campaign_pk })
            .await
            .map_err(|_| HubError::Unavailable)
    }

    /// Splits updates into known messages (grouped by campaign) and unknown ones.
    async fn resolve(
        &self,
        updates: Vec<StatusUpdate>,
    ) -> Result<(HashMap<i64, Vec<(i64, StatusUpdate)>>, Vec<StatusUpdate>), HubError> {
        let mut by_channel: HashMap<Channel, Vec<&str>> = HashMap::new();
        for update in &updates {
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
            refs.insert(channel, found.into_iter().collect());
        }
        let mut known: HashMap<i64, Vec<(i64, StatusUpdate)>> = HashMap::new();
        let mut unknown = Vec::new();
        for update in updates {
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

    /// Adds outcomes to the receipt, and to the debug tail when someone
    /// watches it; updates whose message became known are queued for
    /// another round.
    fn count(
        &self,
        receipt: &mut WebhookReceipt,
        again: &mut Vec<StatusUpdate>,
        updates: Vec<StatusUpdate>,
        outcomes: Vec<UpdateOutcome>,
    ) {
        // Only when someone watches the tail is it worth building its events.
        let tail = self
            .broadcaster
            .has_incoming_subscribers()
            .then(|| crate::store::format_ms(crate::store::now_ms()));
        for (update, outcome) in updates.into_iter().zip(outcomes) {
            let label = match outcome {
                UpdateOutcome::Applied { .. } => {
                    receipt.applied += 1;
                    "applied"
                }
                UpdateOutcome::Duplicate => {
                    receipt.duplicates += 1;
                    "duplicate"
                }
                UpdateOutcome::Buffered => {
                    receipt.unmatched += 1;
                    "unmatched"
                }
                UpdateOutcome::Known(_) => {
                    again.push(update);
                    continue;
                }
            };
            if let Some(received_at) = &tail {
                self.broadcaster.publish_incoming(IncomingEvent {
                    received_at: received_at.clone(),
                    channel: update.channel.as_str().to_owned(),
                    provider_message_id: Some(update.provider_message_id),
                    event: Some(update.event),
                    status: update.status.map(|status| status.as_str().to_owned()),
                    outcome: label,
                    reason: None,
                });
            }
        }
    }

    async fn apply_to_campaign(
        &self,
        campaign_pk: i64,
        updates: Vec<(i64, StatusUpdate)>,
    ) -> Result<(Vec<StatusUpdate>, Vec<UpdateOutcome>), HubError> {
        for _ in 0..MAX_REROUTES {
            let actor = self.locate(campaign_pk).await?;
            match actor
                .send(ApplyUpdates {
                    updates: updates.clone(),
                })
                .await
            {
                Ok(result) => {
                    let outcomes = result?;
                    return Ok((
                        updates.into_iter().map(|(_, update)| update).collect(),
                        outcomes,
                    ));
                }
                // The actor stopped between `Locate` and `send`: locate again.
                Err(_stopped) => continue,
            }
        }
        Err(HubError::Unavailable)
    }
}
