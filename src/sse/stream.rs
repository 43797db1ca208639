//! One SSE connection: reads the topic it follows (see
//! [`crate::hub::broadcast`]), keeps what its caller may see, and copes with
//! slowness on either side without ever blocking the publisher.
//!
//! A connection has no timer of its own (besides its token's expiry and
//! the SSE layer's heartbeat): metrics come already coalesced, once per
//! window per campaign, so it is woken only when its topic changed, and
//! sends each frame at once. A metrics frame that finds the buffer full
//! waits, latest wins, until the client makes room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web_lab::sse;
use bytestring::ByteString;
use prometheus::IntCounter;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::encode::{counters_json, metrics_data, shutdown_event, status_data, status_json};
use crate::api::campaigns::{
    buckets_json, campaign_summary, changed_buckets, latency_json, metrics_json,
};
use crate::domain::CampaignCounters;
use crate::hub::{ChangedSeries, Hub, Live, PublishedCampaign, StatusBatch, Subscription};
use crate::metrics::Metrics;
use crate::shutdown::{SHUTDOWN_RETRY, Shutdown};
use crate::store::{EventPosition, StatusChange, Store};

/// How long a status stream may take nothing from its buffer before it is
/// closed as too slow (`event: lagged`).
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(5);

/// Longest a campaign stream waits for the store to read what it sends
/// with a frame (failure reasons and cost, changed buckets); past it the
/// frame goes out with the counters alone.
const STORE_READ_LIMIT: Duration = Duration::from_secs(2);

/// Most campaigns a tenant stream snapshots on connect (and on a resync).
pub(super) const MAX_SNAPSHOT_CAMPAIGNS: u32 = 1000;

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
    pub(super) fn admits(&self, campaign_pk: i64, counters: &CampaignCounters) -> bool {
        match self {
            Scope::Campaign(only) => campaign_pk == *only,
            Scope::Tenant {
                tenant_id,
                campaigns,
            } => {
                tenant_id
                    .as_ref()
                    .is_none_or(|tenant| *tenant == counters.tenant_id)
                    && campaigns
                        .as_ref()
                        .is_none_or(|list| list.contains(&counters.campaign_id))
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
    /// Returns a change's position in this stream's order; its `event_id`
    /// is the change's SSE `id:`.
    fn key(self, change: &StatusChange) -> EventPosition {
        match self {
            IdMode::Version => EventPosition {
                xact: 0,
                event_id: change.version,
            },
            IdMode::EventCursor => change.position(),
        }
    }
}

/// What a campaign stream sends beside the counters: every `snapshot` and
/// `metrics` event also carries the campaign's failure reasons and cost
/// (as `GET …/metrics` does), and with `include=timeseries` each `metrics`
/// event is followed by `event: timeseries` with the funnel buckets that
/// changed since the client's last one.
#[derive(Debug)]
pub(super) struct CampaignExtras {
    pub(super) campaign_pk: i64,
    pub(super) tenant_id: String,
    pub(super) campaign_id: String,
    /// `include=timeseries`: the bucket name and width in minutes.
    pub(super) series: Option<(&'static str, i64)>,
    /// The counters version up to which the client has the time series.
    pub(super) series_version: i64,
    /// The `latency` object the client has.
    pub(super) latency: Option<serde_json::Value>,
    /// The pending frame's events, read by [`Connection::prepare`].
    prepared: Option<Prepared>,
}

impl CampaignExtras {
    pub(super) fn new(
        info: &crate::store::CampaignInfo,
        series: Option<(&'static str, i64)>,
    ) -> Self {
        CampaignExtras {
            campaign_pk: info.campaign_pk,
            tenant_id: info.tenant_id.clone(),
            campaign_id: info.campaign_id.clone(),
            series,
            series_version: 0,
            latency: None,
            prepared: None,
        }
    }

    /// Encodes a `timeseries` event's data of `series` at counters
    /// `version`; `snapshot` tells whether it replaces the client's buckets.
    pub(super) fn series_json(
        &self,
        version: i64,
        snapshot: bool,
        complete: bool,
        buckets: &[(i64, [i64; 5])],
        latency: &serde_json::Value,
    ) -> ByteString {
        let bucket = self.series.map_or("1m", |(name, _)| name);
        let body = serde_json::json!({
            "tenant_id": self.tenant_id,
            "campaign_id": self.campaign_id,
            "bucket": bucket,
            "version": version,
            "snapshot": snapshot,
            "complete": complete,
            "buckets": buckets_json(buckets),
            "latency": latency,
        });
        ByteString::from(body.to_string())
    }
}

/// A campaign stream's events for one frame, ready to send together.
#[derive(Debug)]
struct Prepared {
    version: i64,
    metrics: ByteString,
    /// `None` when the time series was not asked for or could not be read;
    /// `Some(None)` when nothing in it changed.
    series: Option<Option<(ByteString, serde_json::Value)>>,
}

/// Returns the slot of a bucket width in [`PublishedCampaign::series`].
fn series_slot(width: i64) -> usize {
    match width {
        1 => 0,
        5 => 1,
        _ => 2,
    }
}

/// Reads the buckets of `width` minutes changed after `after`, and the
/// latency, from the store.
async fn read_series(
    store: &Store,
    campaign_pk: i64,
    width: i64,
    after: i64,
) -> Result<ChangedSeries, crate::store::StoreError> {
    let (buckets, complete) = changed_buckets(store, campaign_pk, width, after).await?;
    let latency = latency_json(&store.campaign_latency(campaign_pk).await?);
    Ok(ChangedSeries {
        after,
        buckets,
        complete,
        latency,
    })
}

/// The counters a connection moves.
#[derive(Clone, Debug)]
pub(super) struct StreamCounters {
    /// Times the connection was woken with something for it.
    wakeups: IntCounter,
    /// Live `metrics` data encoded (once per frame, by whichever stream first sends it).
    encoded_metrics: IntCounter,
    /// Live `status` data encoded (once per change).
    encoded_statuses: IntCounter,
    /// Campaign streams' `metrics` data read and encoded (once per frame).
    encoded_campaign_metrics: IntCounter,
    /// Reads of changed buckets (once per frame, bucket width and
    /// starting version).
    series_reads: IntCounter,
    /// Streams closed because their client took nothing for a while.
    lagged_slow_client: IntCounter,
    /// Status streams closed because they missed changes.
    lagged_missed_changes: IntCounter,
    /// Metrics-only streams that fell behind and re-read their counters.
    lagged_resync: IntCounter,
}

impl StreamCounters {
    pub(super) fn new(metrics: &Metrics) -> Self {
        StreamCounters {
            wakeups: metrics.sse_wakeups.clone(),
            encoded_metrics: metrics.sse_frames_encoded.with_label_values(&["metrics"]),
            encoded_statuses: metrics.sse_frames_encoded.with_label_values(&["status"]),
            encoded_campaign_metrics: metrics
                .sse_frames_encoded
                .with_label_values(&["campaign_metrics"]),
            series_reads: metrics
                .sse_frames_encoded
                .with_label_values(&["timeseries"]),
            lagged_slow_client: metrics.sse_lagged.with_label_values(&["slow_client"]),
            lagged_missed_changes: metrics.sse_lagged.with_label_values(&["missed_changes"]),
            lagged_resync: metrics.sse_lagged.with_label_values(&["resync"]),
        }
    }
}

/// One connection's state; [`Connection::run`] drives it.
#[derive(Debug)]
pub(super) struct Connection {
    /// The bounded buffer to the client's socket; only ever `try_send`.
    tx: mpsc::Sender<sse::Event>,
    /// Which campaigns this caller may see.
    scope: Scope,
    /// Whether the client asked for `event: status`.
    include_statuses: bool,
    /// What the `id:` of events is on this stream.
    id_mode: IdMode,
    /// Latest counters version the client has per campaign: older ones are skipped.
    sent_versions: HashMap<i64, i64>,
    /// Frames waiting for room in the buffer; only the latest per campaign.
    pending: HashMap<i64, Arc<PublishedCampaign>>,
    /// Highest position (version, or event position, per `id_mode`) that
    /// the snapshot and replay cover: live changes at or below it are not
    /// sent again.
    floor: EventPosition,
    /// Highest event position delivered: its event id is the `id:` of
    /// metrics on tenant streams.
    cursor: EventPosition,
    /// Whether a live change the client's snapshot already counts is
    /// skipped: true for a stream that starts from a snapshot; false for a
    /// resumed status stream, which gets every change after its
    /// `Last-Event-ID` (by replay, or live when the replay could not see it
    /// yet), whatever the snapshot counts.
    skip_counted: bool,
    /// When the caller's token expires (Unix seconds): the stream ends then.
    expires_at: Option<u64>,
    counters: StreamCounters,
    /// Campaign streams: failure reasons, cost and the time series.
    extras: Option<CampaignExtras>,
}

impl Connection {
    pub(super) fn new(
        tx: mpsc::Sender<sse::Event>,
        scope: Scope,
        include_statuses: bool,
        id_mode: IdMode,
        counters: StreamCounters,
    ) -> Self {
        Connection {
            tx,
            scope,
            include_statuses,
            id_mode,
            sent_versions: HashMap::new(),
            pending: HashMap::new(),
            floor: EventPosition::default(),
            cursor: EventPosition::default(),
            skip_counted: true,
            expires_at: None,
            counters,
            extras: None,
        }
    }

    /// Makes this a campaign stream that sends `extras`' analytics.
    pub(super) fn with_extras(&mut self, extras: CampaignExtras) {
        self.extras = Some(extras);
    }

    /// Queues `event: snapshot` of the campaign stream: `data` is the
    /// counters at `version` with the failure reasons and cost.
    pub(super) fn snapshot_data(&mut self, campaign_pk: i64, version: i64, data: ByteString) {
        self.sent_versions.insert(campaign_pk, version);
        let id = self.id_for(version);
        self.send(sse::Data::new(data).event("snapshot").id(id).into());
    }

    /// Queues `event: timeseries` (campaign streams with
    /// `include=timeseries`): the client has the series up to counters
    /// `version` once it is sent.
    pub(super) fn series(&mut self, version: i64, data: ByteString, latency: serde_json::Value) {
        let id = self.id_for(version);
        if self.send(sse::Data::new(data).event("timeseries").id(id).into()) {
            if let Some(extras) = &mut self.extras {
                extras.series_version = version;
                extras.latency = Some(latency);
            }
        }
    }

    /// Ends the stream, after `event: expired`, once the Unix time
    /// `expires_at` (a token's `exp`) has passed.
    pub(super) fn expire_at(&mut self, expires_at: u64) {
        self.expires_at = Some(expires_at);
    }

    /// Queues `event: snapshot` of a campaign.
    pub(super) fn snapshot(&mut self, campaign_pk: i64, counters: &CampaignCounters) {
        self.sent_versions.insert(campaign_pk, counters.version);
        let id = self.id_for(counters.version);
        if let Ok(data) = sse::Data::new_json(counters) {
            self.send(data.event("snapshot").id(id).into());
        }
    }

    /// Records that the client already has `version` of a campaign.
    pub(super) fn seen(&mut self, campaign_pk: i64, version: i64) {
        self.sent_versions.insert(campaign_pk, version);
    }

    /// Marks everything up to `cursor` (in this stream's order) as
    /// covered: changes at or below it are not sent.
    pub(super) fn advance_cursor(&mut self, cursor: EventPosition) {
        self.floor = self.floor.max(cursor);
        self.cursor = self.cursor.max(cursor);
    }

    /// Sends every change after the resume point, also those the snapshot
    /// already counts (see `skip_counted`).
    pub(super) fn resumed(&mut self) {
        self.skip_counted = false;
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
        change: &StatusChange,
    ) {
        let key = self.id_mode.key(change);
        self.status(status_json(tenant_id, campaign_id, change), key.event_id);
        self.advance_cursor(key);
    }

    fn id_for(&self, version: i64) -> String {
        match self.id_mode {
            IdMode::Version => version.to_string(),
            IdMode::EventCursor => self.cursor.event_id.to_string(),
        }
    }

    /// Queues an event without waiting; `false` when the client is too slow
    /// to take it (or gone).
    fn send(&mut self, event: sse::Event) -> bool {
        self.tx.try_send(event).is_ok()
    }

    /// Queues `event: status`; `false` if the client is too slow.
    fn status(&mut self, json: ByteString, id: i64) -> bool {
        self.send(
            sse::Data::new(json)
                .event("status")
                .id(id.to_string())
                .into(),
        )
    }

    /// Queues `event: status` of a live change, waiting for room in the
    /// connection's buffer (one slot is kept for `event: lagged`), so that a
    /// commit with more changes than the buffer holds reaches a client that
    /// reads. Waiting holds up only this connection: the publisher and the
    /// fan-out never wait, and while this one waits, its topic's status
    /// channel keeps the windows for it (bounded; beyond, it lags and is
    /// closed). A client
    /// that takes nothing for [`SLOW_CLIENT_GRACE`] is too slow: it gets
    /// `event: lagged` and is closed. `false` ends the connection.
    async fn status_waiting(&mut self, json: ByteString, id: i64) -> bool {
        let event = sse::Data::new(json)
            .event("status")
            .id(id.to_string())
            .into();
        // The usual case, room at once, costs no timer.
        if let Ok(mut permits) = self.tx.try_reserve_many(2) {
            if let Some(permit) = permits.next() {
                permit.send(event);
            }
            return true;
        }
        let sent = match tokio::time::timeout(SLOW_CLIENT_GRACE, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(permit) = permits.next() {
                    permit.send(event);
                }
                // The other slot is released with `permits`.
                Some(true)
            }
            Ok(Err(_closed)) => Some(false),
            Err(_elapsed) => None,
        };
        sent.unwrap_or_else(|| {
            self.counters.lagged_slow_client.inc();
            self.lagged("client too slow");
            false
        })
    }

    /// Sends `event: lagged` (using the slot kept free for it).
    fn lagged(&mut self, reason: &str) {
        let data = serde_json::json!({ "reason": reason }).to_string();
        let _ = self
            .tx
            .try_send(sse::Data::new(data).event("lagged").into());
    }

    /// Takes a window's batch of the topic (status streams); `false` ends
    /// the connection. Its changes come first, then the counters they led
    /// to, so a `metrics` event never overtakes the status events of its
    /// own commit, and ids never go back.
    async fn take_batch(&mut self, batch: &StatusBatch) -> bool {
        if batch.gap {
            self.counters.lagged_missed_changes.inc();
            self.lagged("missed status changes");
            return false;
        }
        for published in &batch.changes {
            if !self
                .scope
                .admits(published.campaign_pk(), &published.counters)
            {
                continue;
            }
            let change = &published.change;
            let key = self.id_mode.key(change);
            // Covered by the snapshot or the replay: at or below the floor,
            // or, for a stream that started from a snapshot, within the
            // counters version the client already has (on PostgreSQL a
            // tenant snapshot can include commits above its floor: those of
            // transactions that ended after the horizon).
            let covered = self.skip_counted
                && self
                    .sent_versions
                    .get(&change.campaign_pk)
                    .is_some_and(|version| change.version <= *version);
            if key <= self.floor || covered {
                continue;
            }
            let data = status_data(published, &self.counters.encoded_statuses);
            if !self.status_waiting(data, key.event_id).await {
                return false;
            }
            self.cursor = self.cursor.max(change.position());
        }
        self.take_frames(&batch.campaigns, false);
        true
    }

    /// Keeps the frames this caller may see and does not have yet, latest
    /// per campaign, for [`Connection::flush`]. `advance` moves the cursor
    /// to their changes' positions (streams without statuses, whose ids
    /// follow the frames).
    fn take_frames(&mut self, frames: &[Arc<PublishedCampaign>], advance: bool) {
        for frame in frames {
            if !self.scope.admits(frame.campaign_pk, &frame.counters) {
                continue;
            }
            if advance {
                self.cursor = self.cursor.max(frame.position);
            }
            let known = self
                .sent_versions
                .get(&frame.campaign_pk)
                .copied()
                .unwrap_or(-1);
            let newer_than_pending = self
                .pending
                .get(&frame.campaign_pk)
                .is_none_or(|pending| pending.counters.version < frame.counters.version);
            if frame.counters.version > known && newer_than_pending {
                self.pending.insert(frame.campaign_pk, Arc::clone(frame));
            }
        }
    }

    /// Sends the pending metrics. A full buffer keeps them pending: the
    /// client skips to the latest state once it makes room.
    fn flush(&mut self) {
        if self.extras.is_some() {
            self.flush_campaign();
            return;
        }
        let campaigns: Vec<i64> = self.pending.keys().copied().collect();
        for campaign_pk in campaigns {
            let Some(frame) = self.pending.remove(&campaign_pk) else {
                continue;
            };
            let version = frame.counters.version;
            let id = self.id_for(version);
            let data = metrics_data(&frame, &self.counters.encoded_metrics);
            match self
                .tx
                .try_send(sse::Data::new(data).event("metrics").id(id).into())
            {
                Ok(()) => {
                    self.sent_versions.insert(campaign_pk, version);
                }
                Err(TrySendError::Full(_)) => {
                    self.pending.insert(campaign_pk, frame);
                    return;
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
    }

    /// Reads what a campaign stream sends with its pending frame (see
    /// [`CampaignExtras`]), unless already read: the failure reasons and
    /// cost once per frame for every stream (the frame's `enriched` cell),
    /// and the changed buckets once per frame and bucket width for the
    /// streams that have the previous version (its `series` cells). A
    /// store error sends the counters alone, and the time series at the
    /// next frame.
    async fn prepare(&mut self, store: &Store) {
        let Some(extras) = &self.extras else {
            return;
        };
        let Some(frame) = self.pending.get(&extras.campaign_pk).cloned() else {
            return;
        };
        let version = frame.counters.version;
        if extras
            .prepared
            .as_ref()
            .is_some_and(|prepared| prepared.version == version)
        {
            return;
        }
        let campaign_pk = extras.campaign_pk;
        // One attempt per frame, shared: a failed or slow read is not
        // retried by each stream in turn, and never holds a stream longer
        // than STORE_READ_LIMIT.
        let enriched = frame
            .enriched
            .get_or_init(|| async {
                self.counters.encoded_campaign_metrics.inc();
                match tokio::time::timeout(STORE_READ_LIMIT, campaign_summary(store, campaign_pk))
                    .await
                {
                    Ok(Ok(summary)) => Some(ByteString::from(
                        metrics_json(&frame.counters, &summary).to_string(),
                    )),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, campaign_pk, "reading a campaign's failure reasons and cost failed");
                        None
                    }
                    Err(_elapsed) => None,
                }
            })
            .await
            .clone();
        let metrics =
            enriched.unwrap_or_else(|| metrics_data(&frame, &self.counters.encoded_metrics));
        let mut series = None;
        if let Some((_, width)) = extras.series {
            let after = extras.series_version;
            let cell = &frame.series[series_slot(width)];
            let reads = &self.counters.series_reads;
            let read_once = || async {
                reads.inc();
                tokio::time::timeout(
                    STORE_READ_LIMIT,
                    read_series(store, campaign_pk, width, after),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(Arc::new)
            };
            let shared = cell.get_or_init(read_once).await.clone();
            // A read from an older version holds every change this stream
            // needs; one from a newer version may not: read our own. A
            // shared read that failed is not tried again: the next frame
            // sends what changed since the client's version.
            let read = match shared {
                Some(read) if read.after <= after => Some(read),
                Some(_) => read_once().await,
                None => None,
            };
            if let Some(read) = read {
                let changed =
                    !read.buckets.is_empty() || extras.latency.as_ref() != Some(&read.latency);
                series = Some(changed.then(|| {
                    let data = extras.series_json(
                        version,
                        false,
                        read.complete,
                        &read.buckets,
                        &read.latency,
                    );
                    (data, read.latency.clone())
                }));
            }
        }
        if let Some(extras) = &mut self.extras {
            extras.prepared = Some(Prepared {
                version,
                metrics,
                series,
            });
        }
    }

    /// Returns how many buffer slots the next flush needs at once.
    fn slots_needed(&self) -> usize {
        let series = self
            .extras
            .as_ref()
            .and_then(|extras| extras.prepared.as_ref())
            .is_some_and(|prepared| matches!(prepared.series, Some(Some(_))));
        if series { 2 } else { 1 }
    }

    /// [`Connection::flush`] of a campaign stream: the pending frame's
    /// `metrics`, then its `timeseries`, both or neither.
    fn flush_campaign(&mut self) {
        let Some(extras) = &mut self.extras else {
            return;
        };
        let Some(frame) = self.pending.remove(&extras.campaign_pk) else {
            return;
        };
        let version = frame.counters.version;
        let prepared = extras
            .prepared
            .take()
            .filter(|prepared| prepared.version == version);
        let (metrics, series) = match prepared {
            Some(prepared) => (prepared.metrics, prepared.series),
            None => (metrics_data(&frame, &self.counters.encoded_metrics), None),
        };
        // A campaign stream's ids are its campaign's versions.
        let id = version.to_string();
        let changed = series.as_ref().is_some_and(Option::is_some);
        let permits = match self.tx.try_reserve_many(if changed { 2 } else { 1 }) {
            Ok(permits) => permits,
            Err(TrySendError::Full(())) => {
                // Keep it all for when the client makes room.
                extras.prepared = Some(Prepared {
                    version,
                    metrics,
                    series,
                });
                self.pending.insert(frame.campaign_pk, frame);
                return;
            }
            Err(TrySendError::Closed(())) => return,
        };
        let mut permits = permits;
        if let Some(permit) = permits.next() {
            permit.send(
                sse::Data::new(metrics)
                    .event("metrics")
                    .id(id.clone())
                    .into(),
            );
        }
        self.sent_versions.insert(frame.campaign_pk, version);
        match (series, permits.next()) {
            (Some(Some((data, latency))), Some(permit)) => {
                permit.send(sse::Data::new(data).event("timeseries").id(id).into());
                extras.series_version = version;
                extras.latency = Some(latency);
            }
            // Nothing in the series changed: the client has it up to here.
            (Some(None), _) => extras.series_version = version,
            // Not read: the next frame sends what changed since the last.
            _ => {}
        }
    }

    /// Re-reads counters after the topic dropped frames this stream had not
    /// read, so the client ends on the latest state even though it missed
    /// updates.
    async fn resync(&mut self, hub: &Hub, store: &Store) {
        let fresh: Vec<(i64, CampaignCounters)> = match &self.scope {
            Scope::Campaign(campaign_pk) => match hub.counters(*campaign_pk).await {
                Ok(counters) => vec![(*campaign_pk, counters)],
                Err(_) => Vec::new(),
            },
            Scope::Tenant { tenant_id, .. } => {
                match store
                    .tenant_snapshot(tenant_id.as_deref(), MAX_SNAPSHOT_CAMPAIGNS)
                    .await
                {
                    Ok((_, all)) => all,
                    Err(_) => Vec::new(),
                }
            }
        };
        let frames: Vec<Arc<PublishedCampaign>> = fresh
            .into_iter()
            .map(|(campaign_pk, counters)| {
                let encoded = counters_json(&counters);
                let frame = PublishedCampaign::new(
                    campaign_pk,
                    Arc::new(counters),
                    EventPosition::default(),
                );
                let _ = frame.encoded.set(encoded);
                Arc::new(frame)
            })
            .collect();
        self.take_frames(&frames, false);
    }

    /// Runs until the client goes away, its token expires, the hub stops
    /// or shuts down (`event: shutdown` with a `retry:` hint, then the end),
    /// or a status subscriber falls too far behind. Wakes only for its
    /// topic, the expiry, the shutdown, and room in a full buffer when
    /// metrics wait.
    pub(super) async fn run(
        mut self,
        mut live: Subscription,
        hub: Hub,
        store: Store,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let expires = self.expires_at;
        let expiry = tokio::time::sleep(until_unix(expires.unwrap_or(u64::MAX)));
        tokio::pin!(expiry);
        loop {
            // What the pending events need at once: a campaign stream's
            // `metrics` and `timeseries` go out together.
            let slots = self.slots_needed();
            tokio::select! {
                biased;
                _ = self.tx.closed() => return,
                () = &mut expiry, if expires.is_some() => {
                    // Use the slot a full buffer may not have: the stream ends anyway.
                    let _ = self.tx.try_send(
                        sse::Data::new(r#"{"reason":"token expired"}"#).event("expired").into(),
                    );
                    return;
                }
                () = Shutdown::began(&mut shutdown) => {
                    // Metrics still pending are the latest state: send them
                    // first if there is room; the client resyncs anyway.
                    self.flush();
                    let _ = self.tx.try_send(shutdown_event(SHUTDOWN_RETRY));
                    return;
                }
                received = live.next() => {
                    self.counters.wakeups.inc();
                    match received {
                        Live::Frames(frames) => self.take_frames(&frames, true),
                        Live::Batch(batch) => {
                            if !self.take_batch(&batch).await {
                                return;
                            }
                        }
                        Live::Behind if self.include_statuses => {
                            self.counters.lagged_missed_changes.inc();
            self.lagged("missed status changes");
                            return;
                        }
                        Live::Behind => {
                            self.counters.lagged_resync.inc();
                            self.resync(&hub, &store).await;
                        }
                        Live::Closed => return,
                    }
                    self.prepare(&store).await;
                    self.flush();
                }
                // Room again for all of them (the permits are given back at
                // once; this task is the buffer's only sender): send the
                // latest metrics.
                open = async { self.tx.reserve_many(slots).await.is_ok() }, if !self.pending.is_empty() => {
                    if !open {
                        return;
                    }
                    self.flush();
                }
            }
        }
    }
}

/// Returns the time left until the Unix time `at` (seconds), zero when it
/// has passed, and about a century when it is absurdly far.
fn until_unix(at: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_secs(at.min(now.as_secs() + 100 * 365 * 86_400));
    at.saturating_sub(now)
}
