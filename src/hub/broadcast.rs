//! The broadcast point between the DB actor and its subscribers (the SSE
//! streams), beside the hub that publishes into it.
//!
//! The DB actor publishes each commit's changes once; every SSE connection
//! holds a receiver and filters what it may see. Channels are bounded
//! (`tokio::sync::broadcast`): publishing never waits for a subscriber, and a
//! subscriber that falls behind learns it (`Lagged`) instead of making the
//! channel grow. Because the channels do not belong to campaign actors, a
//! stream keeps working when its campaign's actor stops for idleness.

use std::sync::{Arc, OnceLock};

use bytestring::ByteString;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::CampaignCounters;
use crate::store::StatusChange;

/// Changes kept for subscribers that are behind: about a second of a busy
/// hub. A subscriber further behind skips to a fresh snapshot (metrics) or
/// is disconnected (statuses).
const CAMPAIGN_CHANNEL_CAPACITY: usize = 4096;

/// Incoming events kept for the debug page's live tail.
const INCOMING_CHANNEL_CAPACITY: usize = 1024;

/// One commit's effect, as subscribers see it. The DB actor publishes one
/// per commit, in commit order, so event ids reach every subscriber in
/// increasing order and a `metrics` event never overtakes the status events
/// of its own commit.
///
/// It carries data, not wire text: each stream encodes what it sends, and
/// the `encoded` cells make sure each campaign's counters and each change
/// are encoded once per commit, whatever the number of streams.
#[derive(Debug, Default)]
pub struct CommitUpdate {
    /// Campaigns the commit changed, with their counters after it.
    pub campaigns: Vec<PublishedCampaign>,
    /// The commit's message changes, in `(xact, event id)` order.
    pub changes: Vec<PublishedChange>,
}

/// A campaign's counters after a commit.
#[derive(Debug)]
pub struct PublishedCampaign {
    pub campaign_pk: i64,
    pub counters: Arc<CampaignCounters>,
    /// The counters as the SSE layer encodes them, filled by the first
    /// stream that sends them and shared by the others.
    pub encoded: OnceLock<ByteString>,
}

/// One message change of a commit.
#[derive(Debug)]
pub struct PublishedChange {
    /// The counters of the change's campaign after the commit (they name
    /// its tenant and campaign).
    pub counters: Arc<CampaignCounters>,
    pub change: StatusChange,
    /// The change as the SSE layer encodes it, filled once and shared.
    pub encoded: OnceLock<ByteString>,
}

impl PublishedChange {
    /// The change's campaign.
    pub fn campaign_pk(&self) -> i64 {
        self.change.campaign_pk
    }
}

impl CommitUpdate {
    /// Builds the update of a commit from what its campaign writes returned:
    /// each campaign's counters after the commit and the changes it made;
    /// `None` when the commit changed no campaign.
    pub fn from_writes<'a>(
        writes: impl IntoIterator<Item = (i64, &'a Arc<CampaignCounters>, &'a [StatusChange])>,
    ) -> Option<Self> {
        let mut update = CommitUpdate::default();
        for (campaign_pk, counters, changes) in writes {
            update
                .changes
                .extend(changes.iter().map(|change| PublishedChange {
                    counters: Arc::clone(counters),
                    change: change.clone(),
                    encoded: OnceLock::new(),
                }));
            // Several writes of one campaign in a commit share its final counters.
            match update
                .campaigns
                .iter_mut()
                .find(|campaign| campaign.campaign_pk == campaign_pk)
            {
                Some(campaign) if campaign.counters.version < counters.version => {
                    campaign.counters = Arc::clone(counters);
                }
                Some(_) => {}
                None => update.campaigns.push(PublishedCampaign {
                    campaign_pk,
                    counters: Arc::clone(counters),
                    encoded: OnceLock::new(),
                }),
            }
        }
        update.sort();
        (!update.campaigns.is_empty()).then_some(update)
    }

    /// Builds the update of a page of the change feed: each campaign's
    /// counters after the page, and the page's changes.
    pub fn from_page(
        campaigns: Vec<(i64, Arc<CampaignCounters>)>,
        changes: Vec<StatusChange>,
    ) -> Option<Self> {
        let mut update = CommitUpdate::default();
        for change in changes {
            let Some((_, counters)) = campaigns
                .iter()
                .find(|(campaign_pk, _)| *campaign_pk == change.campaign_pk)
            else {
                // Every change's commit wrote its campaign's counters.
                tracing::warn!(
                    campaign_pk = change.campaign_pk,
                    "a change without counters in its page"
                );
                continue;
            };
            update.changes.push(PublishedChange {
                counters: Arc::clone(counters),
                change,
                encoded: OnceLock::new(),
            });
        }
        update.campaigns = campaigns
            .into_iter()
            .map(|(campaign_pk, counters)| PublishedCampaign {
                campaign_pk,
                counters,
                encoded: OnceLock::new(),
            })
            .collect();
        update.sort();
        (!update.campaigns.is_empty()).then_some(update)
    }

    /// Puts the changes in commit-safe order: `(xact, event id)` (on SQLite
    /// `xact` is 0 and event ids follow commits).
    fn sort(&mut self) {
        self.changes
            .sort_by_key(|published| (published.change.xact, published.change.event_id));
    }
}

/// One provider event as it came in, for the debug page's tail.
#[derive(Clone, Debug, Serialize)]
pub struct IncomingEvent {
    pub received_at: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `applied`, `duplicate`, `unmatched` or `dead_letter`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The broadcast channels. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Broadcaster {
    /// Every commit's changes, for the dashboards' streams.
    campaigns: broadcast::Sender<Arc<CommitUpdate>>,
    /// Every incoming provider event, for the debug page's tail.
    incoming: broadcast::Sender<Arc<IncomingEvent>>,
}

impl Broadcaster {
    /// Returns a broadcaster with no subscribers.
    pub fn new() -> Self {
        Broadcaster {
            campaigns: broadcast::channel(CAMPAIGN_CHANNEL_CAPACITY).0,
            incoming: broadcast::channel(INCOMING_CHANNEL_CAPACITY).0,
        }
    }

    /// Publishes a commit's changes to every subscriber; never waits.
    pub fn publish(&self, update: CommitUpdate) {
        // `send` only fails when nobody listens, which is fine.
        let _ = self.campaigns.send(Arc::new(update));
    }

    /// Tells whether any stream is connected, so the DB actor builds
    /// updates only when someone will read them.
    pub fn has_subscribers(&self) -> bool {
        self.campaigns.receiver_count() > 0
    }

    /// Returns a receiver of every commit published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommitUpdate>> {
        self.campaigns.subscribe()
    }

    /// Tells whether anyone watches the incoming feed, so callers build
    /// events only when someone will read them.
    pub fn has_incoming_subscribers(&self) -> bool {
        self.incoming.receiver_count() > 0
    }

    /// Publishes an incoming event to the debug tail; never waits.
    pub fn publish_incoming(&self, event: IncomingEvent) {
        let _ = self.incoming.send(Arc::new(event));
    }

    /// Returns a receiver of incoming events published from now on.
    pub fn subscribe_incoming(&self) -> broadcast::Receiver<Arc<IncomingEvent>> {
        self.incoming.subscribe()
    }
}

impl Default for Broadcaster {
    fn default() -> Self {
        Self::new()
    }
}
