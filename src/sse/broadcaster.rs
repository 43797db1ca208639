//! The broadcast point between the DB actor and SSE subscribers.
//!
//! The DB actor publishes each commit's changes once; every SSE connection
//! holds a receiver and filters what it may see. Channels are bounded
//! (`tokio::sync::broadcast`): publishing never waits for a subscriber, and a
//! subscriber that falls behind learns it (`Lagged`) instead of making the
//! channel grow. Because the channels do not belong to campaign actors, a
//! stream keeps working when its campaign's actor stops for idleness.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use bytestring::ByteString;

use crate::domain::CampaignCounters;
use crate::store::{OpOutcome, StatusChange, format_ms};

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
#[derive(Debug, Default)]
pub struct CommitUpdate {
    /// Campaigns the commit changed, with their counters after it.
    pub campaigns: Vec<PublishedCampaign>,
    /// The commit's message changes, in event-id order.
    pub changes: Vec<PublishedChange>,
}

/// A campaign's counters after a commit, serialized once for every subscriber.
#[derive(Debug)]
pub struct PublishedCampaign {
    pub campaign_pk: i64,
    pub counters: Arc<CampaignCounters>,
    /// `counters` as the `data:` of a `metrics` event.
    pub json: ByteString,
}

/// One message change, serialized once for every subscriber.
#[derive(Debug)]
pub struct PublishedChange {
    pub campaign_pk: i64,
    pub event_id: i64,
    pub version: i64,
    /// The `data:` of its `status` event.
    pub json: ByteString,
}

/// The `data:` of an `event: status`.
#[derive(Serialize)]
pub(super) struct StatusPayload<'a> {
    pub tenant_id: &'a str,
    pub campaign_id: &'a str,
    pub channel: &'a str,
    pub provider_message_id: &'a str,
    pub status: &'a str,
    pub event: &'a str,
    pub provider_at: String,
    pub version: i64,
    pub event_id: i64,
}

impl StatusPayload<'_> {
    /// Serializes a change of `tenant_id`'s campaign `campaign_id`.
    pub(super) fn json(tenant_id: &str, campaign_id: &str, change: &StatusChange) -> ByteString {
        let payload = StatusPayload {
            tenant_id,
            campaign_id,
            channel: change.channel.as_str(),
            provider_message_id: &change.provider_message_id,
            status: change.status.as_str(),
            event: &change.event,
            provider_at: format_ms(change.provider_ts_ms),
            version: change.version,
            event_id: change.event_id,
        };
        // Serializing strings and integers cannot fail.
        ByteString::from(serde_json::to_string(&payload).unwrap_or_default())
    }
}

impl CommitUpdate {
    /// Builds the update of a commit from the outcomes of its campaign
    /// writes, each with its campaign; `None` when it changed no campaign.
    pub fn from_outcomes<'a>(
        outcomes: impl IntoIterator<Item = (i64, &'a OpOutcome)>,
    ) -> Option<Self> {
        let mut update = CommitUpdate::default();
        let mut changes: Vec<(&Arc<CampaignCounters>, &StatusChange)> = Vec::new();
        for (campaign_pk, outcome) in outcomes {
            let (OpOutcome::Applied {
                counters: Some(counters),
                changes: changed,
                ..
            }
            | OpOutcome::Registered {
                counters: Some(counters),
                changes: changed,
                ..
            }) = outcome
            else {
                continue;
            };
            changes.extend(changed.iter().map(|change| (counters, change)));
            // Several writes of one campaign in a commit share its final counters.
            if !update
                .campaigns
                .iter()
                .any(|campaign| campaign.campaign_pk == campaign_pk)
            {
                update.campaigns.push(PublishedCampaign {
                    campaign_pk,
                    counters: counters.clone(),
                    json: ByteString::from(serde_json::to_string(&**counters).unwrap_or_default()),
                });
            }
        }
        changes.sort_by_key(|(_, change)| change.event_id);
        update.changes = changes
            .into_iter()
            .map(|(counters, change)| PublishedChange {
                campaign_pk: change.campaign_pk,
                event_id: change.event_id,
                version: change.version,
                json: StatusPayload::json(&counters.tenant_id, &counters.campaign_id, change),
            })
            .collect();
        (!update.campaigns.is_empty()).then_some(update)
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
    campaigns: broadcast::Sender<Arc<CommitUpdate>>,
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

    /// Tells whether any stream is connected, so the DB actor serializes
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
