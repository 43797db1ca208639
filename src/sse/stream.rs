//! One SSE connection: filters the broadcast for what its caller may see,
//! coalesces metrics, forwards status changes, and copes with slowness on
//! either side without ever blocking the publisher.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web_lab::sse;
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::broadcaster::CampaignUpdate;
use crate::domain::CampaignCounters;
use crate::hub::Hub;
use crate::store::{StatusChange, format_ms};

/// Which changes a connection may see.
#[derive(Clone, Debug)]
pub(super) enum Scope {
    Campaign(i64),
    /// A tenant's campaigns (`None`: every tenant, for the admin), optionally
    /// only those a restricted token lists.
    Tenant {
        tenant_id: Option<String>,
        campaigns: Option<Vec<String>>,
    },
}

impl Scope {
    fn admits(&self, update: &CampaignUpdate) -> bool {
        match self {
            Scope::Campaign(campaign_pk) => update.campaign_pk == *campaign_pk,
            Scope::Tenant {
                tenant_id,
                campaigns,
            } => {
                tenant_id
                    .as_ref()
                    .is_none_or(|tenant| *tenant == update.counters.tenant_id)
                    && campaigns
                        .as_ref()
                        .is_none_or(|list| list.iter().any(|c| *c == update.counters.campaign_id))
            }
        }
    }
}

/// What the SSE `id:` of an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdMode {
    /// The campaign's counters version (campaign streams).
    Version,
    /// The global status-event cursor (tenant streams).
    EventCursor,
}

impl IdMode {
    /// Returns a change's position in this id space.
    fn key(self, change: &StatusChange) -> i64 {
        match self {
            IdMode::Version => change.version,
            IdMode::EventCursor => change.event_id,
        }
    }
}

/// The `data:` of an `event: status`.
#[derive(Serialize)]
struct StatusPayload<'a> {
    tenant_id: &'a str,
    campaign_id: &'a str,
    channel: &'a str,
    provider_message_id: &'a str,
    status: &'a str,
    event: &'a str,
    provider_at: String,
    version: i64,
    event_id: i64,
}

/// One connection's state; [`Connection::run`] drives it.
#[derive(Debug)]
pub(super) struct Connection {
    tx: mpsc::Sender<sse::Event>,
    scope: Scope,
    include_statuses: bool,
    id_mode: IdMode,
    /// Minimum time between two `metrics` events of one campaign.
    window: Duration,
    /// Latest counters version sent per campaign: older ones are skipped.
    sent_versions: HashMap<i64, i64>,
    /// Counters waiting for their campaign's window to pass (latest only).
    pending: HashMap<i64, Arc<CampaignCounters>>,
    /// When each campaign's last `metrics` went out.
    last_sent: HashMap<i64, Instant>,
    /// Highest id (in this stream's id space: version or event id) that
    /// the snapshot and replay cover: live changes at or below it are not
    /// sent again. Fixed once the connection runs, because commits of one
    /// campaign may be published slightly out of order.
    floor: i64,
    /// Highest event id seen: the `id:` of metrics on tenant streams.
    cursor: i64,
    /// Set when the broadcast lagged: counters are re-read from the store.
    resync: bool,
}

impl Connection {
    pub(super) fn new(
        tx: mpsc::Sender<sse::Event>,
        scope: Scope,
        include_statuses: bool,
        id_mode: IdMode,
        window: Duration,
    ) -> Self {
        Connection {
            tx,
            scope,
            include_statuses,
            id_mode,
            window,
            sent_versions: HashMap::new(),
            pending: HashMap::new(),
            last_sent: HashMap::new(),
            floor: 0,
            cursor: 0,
            resync: false,
        }
    }

    /// Queues `event: snapshot`; `cursor` is its id on tenant streams.
    pub(super) fn snapshot(&mut self, campaign_pk: i64, counters: CampaignCounters, cursor: i64) {
        self.seen(campaign_pk, counters.version, cursor);
        let id = self.id_for(counters.version);
        if let Ok(data) = sse::Data::new_json(&counters) {
            self.send(data.event("snapshot").id(id).into());
        }
    }

    /// Records that the client already has `version` of a campaign.
    pub(super) fn seen(&mut self, campaign_pk: i64, version: i64, cursor: i64) {
        self.sent_versions.insert(campaign_pk, version);
        self.advance_cursor(cursor);
    }

    /// Marks everything up to `cursor` as covered: changes at or below it
    /// are not sent.
    pub(super) fn advance_cursor(&mut self, cursor: i64) {
        self.floor = self.floor.max(cursor);
        self.cursor = self.cursor.max(cursor);
    }

    /// Queues `event: reset`: the client drops its state; snapshots follow.
    pub(super) fn reset(&mut self) {
        self.send(sse::Data::new("{}").event("reset").into());
    }

    /// Queues a status change read back from the store.
    pub(super) fn replayed_status(
        &mut self,
        tenant_id: &str,
        campaign_id: &str,
        change: StatusChange,
    ) {
        self.status(tenant_id, campaign_id, &change);
        let key = self.id_mode.key(&change);
        self.advance_cursor(key);
    }

    fn id_for(&self, version: i64) -> String {
        match self.id_mode {
            IdMode::Version => version.to_string(),
            IdMode::EventCursor => self.cursor.to_string(),
        }
    }

    /// Queues an event without waiting; `false` when the client is too slow
    /// to take it (or gone).
    fn send(&mut self, event: sse::Event) -> bool {
        self.tx.try_send(event).is_ok()
    }

    /// Queues `event: status`; `false` if the client is too slow.
    fn status(&mut self, tenant_id: &str, campaign_id: &str, change: &StatusChange) -> bool {
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
        let id = match self.id_mode {
            IdMode::Version => change.version,
            IdMode::EventCursor => change.event_id,
        };
        match sse::Data::new_json(&payload) {
            Ok(data) => self.send(data.event("status").id(id.to_string()).into()),
            Err(_) => true,
        }
    }

    /// Sends `event: lagged` (using the slot kept free for it) and ends.
    fn lagged(&mut self, reason: &str) {
        let data = serde_json::json!({ "reason": reason }).to_string();
        let _ = self
            .tx
            .try_send(sse::Data::new(data).event("lagged").into());
    }

    /// Takes one published update; `false` ends the connection.
    fn take(&mut self, update: &CampaignUpdate) -> bool {
        if !self.scope.admits(update) {
            return true;
        }
        if self.include_statuses {
            let (floor, mode) = (self.floor, self.id_mode);
            for change in update
                .changes
                .iter()
                .filter(|change| mode.key(change) > floor)
            {
                // Keep one slot for `event: lagged`.
                if self.tx.capacity() < 2
                    || !self.status(
                        &update.counters.tenant_id,
                        &update.counters.campaign_id,
                        change,
                    )
                {
                    self.lagged("client too slow");
                    return false;
                }
            }
        }
        if let Some(last) = update
            .changes
            .iter()
            .map(|change| self.id_mode.key(change))
            .max()
        {
            self.cursor = self.cursor.max(last);
        }
        let known = self
            .sent_versions
            .get(&update.campaign_pk)
            .copied()
            .unwrap_or(-1);
        if update.counters.version > known {
            self.pending
                .insert(update.campaign_pk, update.counters.clone());
        }
        true
    }

    /// Sends the pending metrics whose window has passed. A full buffer
    /// keeps them pending: the client skips to the latest state later.
    fn flush(&mut self) {
        let now = Instant::now();
        let due: Vec<i64> = self
            .pending
            .keys()
            .filter(|campaign_pk| {
                self.last_sent
                    .get(campaign_pk)
                    .is_none_or(|last| now.duration_since(*last) >= self.window)
            })
            .copied()
            .collect();
        for campaign_pk in due {
            let Some(counters) = self.pending.remove(&campaign_pk) else {
                continue;
            };
            let id = self.id_for(counters.version);
            let Ok(data) = sse::Data::new_json(&*counters) else {
                continue;
            };
            match self.tx.try_send(data.event("metrics").id(id).into()) {
                Ok(()) => {
                    self.sent_versions.insert(campaign_pk, counters.version);
                    self.last_sent.insert(campaign_pk, now);
                }
                Err(TrySendError::Full(_)) => {
                    self.pending.insert(campaign_pk, counters);
                    return;
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
    }

    /// Re-reads counters after the broadcast lagged, so the client ends on
    /// the latest state even though it missed updates.
    async fn resync(&mut self, hub: &Hub) {
        self.resync = false;
        let fresh: Vec<(i64, CampaignCounters)> = match &self.scope {
            Scope::Campaign(campaign_pk) => match hub.counters(*campaign_pk).await {
                Ok(counters) => vec![(*campaign_pk, counters)],
                Err(_) => Vec::new(),
            },
            Scope::Tenant {
                tenant_id,
                campaigns,
            } => {
                match hub
                    .store()
                    .tenant_snapshot(tenant_id.as_deref(), super::MAX_SNAPSHOT_CAMPAIGNS)
                    .await
                {
                    Ok((_, all)) => all
                        .into_iter()
                        .filter(|(_, counters)| {
                            campaigns
                                .as_ref()
                                .is_none_or(|list| list.contains(&counters.campaign_id))
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                }
            }
        };
        for (campaign_pk, counters) in fresh {
            let known = self.sent_versions.get(&campaign_pk).copied().unwrap_or(-1);
            if counters.version > known {
                self.pending.insert(campaign_pk, Arc::new(counters));
            }
        }
    }

    /// Runs until the client goes away, the hub stops, or a status
    /// subscriber falls too far behind.
    pub(super) async fn run(
        mut self,
        mut updates: broadcast::Receiver<Arc<CampaignUpdate>>,
        hub: Hub,
    ) {
        let tick_every = (self.window / 4).max(Duration::from_millis(5));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                received = updates.recv() => match received {
                    Ok(update) => {
                        if !self.take(&update) {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) if self.include_statuses => {
                        self.lagged("missed status changes");
                        return;
                    }
                    Err(RecvError::Lagged(_)) => self.resync = true,
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if self.resync {
                        self.resync(&hub).await;
                    }
                    if !self.pending.is_empty() {
                        self.flush();
                    }
                }
            }
        }
    }
}
