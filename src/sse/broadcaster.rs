//! The broadcast point between campaign actors and SSE subscribers.
//!
//! Campaign actors publish each committed change once; every SSE connection
//! holds a receiver and filters what it may see. Channels are bounded
//! (`tokio::sync::broadcast`): publishing never waits for a subscriber, and a
//! subscriber that falls behind learns it (`Lagged`) instead of making the
//! channel grow. Because the channels live here and not in the actors, a
//! stream keeps working when its campaign's actor stops for idleness and a
//! new one starts later.

use std::sync::Arc;

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

/// One commit's effect on one campaign.
#[derive(Debug)]
pub struct CampaignUpdate {
    pub campaign_pk: i64,
    /// The campaign's counters after the commit.
    pub counters: Arc<CampaignCounters>,
    /// The message changes of the commit, in order.
    pub changes: Vec<StatusChange>,
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
    campaigns: broadcast::Sender<Arc<CampaignUpdate>>,
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

    /// Publishes a campaign change to every subscriber; never waits.
    pub fn publish(&self, update: CampaignUpdate) {
        // `send` only fails when nobody listens, which is fine.
        let _ = self.campaigns.send(Arc::new(update));
    }

    /// Returns a receiver of every campaign change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CampaignUpdate>> {
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
