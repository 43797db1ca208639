//! The broadcast point between the committers (the DB actor on SQLite, the
//! change follower on PostgreSQL) and the SSE streams, beside the hub that
//! publishes into it. Its cost grows with the events delivered, not with
//! subscribers × commits.
//!
//! - **Topics.** A stream follows one topic: a campaign (by `campaign_pk`),
//!   a tenant (tenant streams), or everything (the admin's tenant stream
//!   without `tenant_id`). A topic exists while someone follows it and is
//!   removed with its last subscriber, so there are never more topics than
//!   open streams, however many campaigns the store holds.
//! - **Publishing** ([`Broadcaster::publish`], once per commit or change-feed
//!   page) only records, in O(campaigns and changes of the commit), the
//!   latest counters of the campaigns someone follows and the changes of
//!   those someone follows with statuses. It never encodes, never wakes a
//!   stream and never waits, so it adds next to nothing to a commit.
//! - **Coalescing, once per campaign.** The fan-out thread takes what a
//!   window gathered, at most once per `STATUSHUB_SSE_COALESCE_MS`, and
//!   hands each topic that window's frames: each changed campaign once, at
//!   its latest counters, in one [`PublishedCampaign`] shared by every topic
//!   and stream (the SSE layer encodes it once, on first use). Metrics
//!   subscribers read a topic's [`BoardLog`] (latest frame per campaign,
//!   through a `watch` wake-up): they are woken only when their topic
//!   changed, at most once per window, and never lag. Status subscribers
//!   (`?include=statuses`) read the topic's bounded channel of
//!   [`StatusBatch`]es: the window's changes of the topic, in commit order,
//!   then its frames, so a `metrics` event never overtakes the status
//!   events of its own commit; one that falls too far behind learns it and
//!   is closed.
//! - **Priority.** Per window the fan-out does work in proportion to the
//!   campaigns changed, the changes followed with statuses and the topics
//!   touched, whatever the commit rate; a stream with nothing new costs no
//!   wake-up. While the write queue is backed up (more than a batch waits)
//!   the window stretches, up to [`coalesce::MAX_STRETCH`] times, so that
//!   dashboards cost less until webhooks have caught up.
//!
//! Because topics do not belong to campaign actors, a stream keeps working
//! when its campaign's actor stops for idleness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::coalesce::{self, BoardLog, Pending, Window};
use crate::domain::CampaignCounters;
use crate::metrics::Metrics;
use crate::store::{EventPosition, StatusChange};

/// Incoming events kept for the debug page's live tail.
const INCOMING_CHANNEL_CAPACITY: usize = 1024;

/// How long a topic's status channel holds batches for a subscriber that is
/// behind (its capacity, in windows, follows from the window): longer than
/// a status stream waits for its client before calling it slow.
const STATUS_HOLD: Duration = Duration::from_secs(8);

/// Bounds of a status channel's capacity, in batches (windows).
const STATUS_BATCHES: (usize, usize) = (16, 1024);

/// Most changes one window gathers for status subscribers (about ten
/// seconds of a busy hub): past it the fan-out is far behind, the changes
/// are dropped and status streams told to resume from the store.
const MAX_PENDING_CHANGES: usize = 50_000;

/// How long a topic's board keeps a frame: subscribers read a board as
/// soon as it changes, so only one stuck for this long misses a frame (it
/// then re-reads the counters).
const BOARD_KEEP_FOR: Duration = Duration::from_secs(30);

/// Most frames one board keeps (campaigns of a tenant that changed within
/// [`BOARD_KEEP_FOR`]).
const MAX_BOARD_FRAMES: usize = 20_000;

/// One commit's effect (or one page of the change feed), as the committer
/// hands it over: data, not wire text. Commits are published in commit
/// order, so event ids reach every subscriber in increasing order.
#[derive(Debug, Default)]
pub struct CommitUpdate {
    /// Campaigns the commit changed, with their counters after it.
    pub campaigns: Vec<(i64, Arc<CampaignCounters>)>,
    /// The commit's message changes, in `(xact, event id)` order.
    pub changes: Vec<PublishedChange>,
}

/// A campaign's counters at the end of a coalescing window: what one
/// `metrics` event carries. One per changed campaign per window, shared by
/// every topic and stream that sends it.
#[derive(Debug)]
pub struct PublishedCampaign {
    pub campaign_pk: i64,
    pub counters: Arc<CampaignCounters>,
    /// The highest position of the campaign's changes in the window
    /// (default when it had none): the `id:` tenant streams without
    /// statuses give it.
    pub position: EventPosition,
    /// The counters as the SSE layer encodes them, filled by the first
    /// stream that sends them and shared by the others.
    pub encoded: OnceLock<ByteString>,
    /// The campaign stream's `metrics` data (the counters with the
    /// campaign's failure reasons and cost), read from the store once, by
    /// the first campaign stream that sends the frame (`None` when that
    /// read failed: the frame goes out with the counters alone).
    pub enriched: tokio::sync::OnceCell<Option<ByteString>>,
    /// Per bucket width (1m, 5m, 1h), the funnel buckets changed after
    /// some version, as the first `include=timeseries` stream read them;
    /// a stream that has at least that version shares the read (`None`
    /// when it failed).
    pub series: [tokio::sync::OnceCell<Option<Arc<ChangedSeries>>>; 3],
}

impl PublishedCampaign {
    /// A frame of `campaign_pk` at `counters`, nothing encoded or read yet.
    pub fn new(campaign_pk: i64, counters: Arc<CampaignCounters>, position: EventPosition) -> Self {
        PublishedCampaign {
            campaign_pk,
            counters,
            position,
            encoded: OnceLock::new(),
            enriched: tokio::sync::OnceCell::new(),
            series: Default::default(),
        }
    }
}

/// A campaign's funnel buckets that commits after version `after` moved,
/// at their counts when read, and its latency percentiles then (see
/// `crate::api::campaigns::changed_buckets`).
#[derive(Debug)]
pub struct ChangedSeries {
    pub after: i64,
    /// `(bucket start in Unix minutes, counts per stage)`, oldest first.
    pub buckets: Vec<(i64, [i64; 5])>,
    /// Whether no changed bucket was left out (at most 1440 are kept).
    pub complete: bool,
    /// The `latency` object.
    pub latency: serde_json::Value,
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

/// What a topic's status subscribers get once per window.
#[derive(Debug, Default)]
pub struct StatusBatch {
    /// The window's changes of the topic's campaigns, in commit order.
    pub changes: Vec<Arc<PublishedChange>>,
    /// The topic's campaigns that changed in the window, at their latest
    /// counters (never older than the changes above).
    pub campaigns: Vec<Arc<PublishedCampaign>>,
    /// Changes were dropped before this batch: a status stream cannot be
    /// complete any more and must resume from the store.
    pub gap: bool,
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
                .find(|(published, _)| *published == campaign_pk)
            {
                Some((_, latest)) if latest.version < counters.version => {
                    *latest = Arc::clone(counters);
                }
                Some(_) => {}
                None => update.campaigns.push((campaign_pk, Arc::clone(counters))),
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
        update.campaigns = campaigns;
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
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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

/// What a stream follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Follow {
    /// One campaign.
    Campaign(i64),
    /// Every campaign of a tenant.
    Tenant(String),
    /// Every campaign of every tenant (the admin).
    Everything,
}

/// How the fan-out is paced.
#[derive(Clone, Copy, Debug)]
pub struct FanoutSettings {
    /// Least time between two windows (`STATUSHUB_SSE_COALESCE_MS`).
    pub window: Duration,
    /// Rows waiting for a commit beyond which ingestion counts as backed
    /// up and the window stretches.
    pub pressure_rows: usize,
}

/// The broadcast point. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Broadcaster {
    /// Topics, the window being gathered, the fan-out thread's handle.
    shared: Arc<Shared>,
    /// Every incoming provider event, for the debug page's tail.
    incoming: broadcast::Sender<Arc<IncomingEvent>>,
}

/// A topic: its metrics board and the wake-up of its metrics subscribers.
/// Its status channel lives in the registry's entry, created with its
/// first status subscriber and dropped with its last.
#[derive(Debug)]
struct Topic {
    board: Mutex<BoardLog>,
    /// Carries the board's head: every change wakes the subscribers.
    wake: watch::Sender<u64>,
}

#[derive(Debug)]
struct Entry {
    topic: Arc<Topic>,
    subscribers: usize,
    status_subscribers: usize,
    statuses: Option<broadcast::Sender<Arc<StatusBatch>>>,
}

/// Who follows what.
#[derive(Debug, Default)]
struct Registry {
    campaigns: HashMap<i64, Entry>,
    tenants: HashMap<String, Entry>,
    everything: Option<Entry>,
}

impl Registry {
    /// Returns the entry of `follow`, made (with a new topic) if there was none.
    fn entry_or_insert(&mut self, follow: &Follow) -> &mut Entry {
        fn fresh() -> Entry {
            Entry {
                topic: Arc::new(Topic {
                    board: Mutex::new(BoardLog::default()),
                    wake: watch::Sender::new(0),
                }),
                subscribers: 0,
                status_subscribers: 0,
                statuses: None,
            }
        }
        match follow {
            Follow::Campaign(campaign_pk) => {
                self.campaigns.entry(*campaign_pk).or_insert_with(fresh)
            }
            Follow::Tenant(tenant) => self.tenants.entry(tenant.clone()).or_insert_with(fresh),
            Follow::Everything => self.everything.get_or_insert_with(fresh),
        }
    }

    fn entry_mut(&mut self, follow: &Follow) -> Option<&mut Entry> {
        match follow {
            Follow::Campaign(campaign_pk) => self.campaigns.get_mut(campaign_pk),
            Follow::Tenant(tenant) => self.tenants.get_mut(tenant),
            Follow::Everything => self.everything.as_mut(),
        }
    }

    fn remove(&mut self, follow: &Follow) {
        match follow {
            Follow::Campaign(campaign_pk) => {
                self.campaigns.remove(campaign_pk);
            }
            Follow::Tenant(tenant) => {
                self.tenants.remove(tenant);
            }
            Follow::Everything => self.everything = None,
        }
    }

    /// The entries a campaign's changes reach: its own, its tenant's, everything's.
    fn routes(&self, campaign_pk: i64, tenant_id: &str) -> [Option<&Entry>; 3] {
        [
            self.campaigns.get(&campaign_pk),
            self.tenants.get(tenant_id),
            self.everything.as_ref(),
        ]
    }

    fn len(&self) -> usize {
        self.campaigns.len() + self.tenants.len() + usize::from(self.everything.is_some())
    }
}

/// The window being gathered, and whether the broadcaster is gone.
#[derive(Debug)]
struct Gathering {
    pending: Pending,
    closed: bool,
}

/// What the publishers and the fan-out thread share.
#[derive(Debug)]
struct Core {
    gathering: Mutex<Gathering>,
    /// Signalled when the window gets its first content, or on close.
    ready: Condvar,
}

#[derive(Debug)]
struct Shared {
    registry: Mutex<Registry>,
    /// Open subscriptions, read without the lock by `has_subscribers`.
    subscriptions: AtomicUsize,
    core: Arc<Core>,
    settings: FanoutSettings,
    /// Capacity of each topic's status channel, in batches.
    status_capacity: usize,
    metrics: Metrics,
}

impl Drop for Shared {
    /// Stops the fan-out thread.
    fn drop(&mut self) {
        lock(&self.core.gathering).closed = true;
        self.core.ready.notify_all();
    }
}

/// Locks a mutex; a poisoned one (a panic elsewhere while holding it) still
/// holds consistent data here, every critical section being a few
/// assignments.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broadcaster {
    /// Returns a broadcaster with no subscribers, and starts its fan-out
    /// thread (which ends when the last clone is dropped).
    pub fn new(settings: FanoutSettings, metrics: Metrics) -> std::io::Result<Self> {
        let window_ms = settings.window.as_millis().max(1);
        let status_capacity = usize::try_from(STATUS_HOLD.as_millis() / window_ms)
            .unwrap_or(usize::MAX)
            .clamp(STATUS_BATCHES.0, STATUS_BATCHES.1);
        let core = Arc::new(Core {
            gathering: Mutex::new(Gathering {
                pending: Pending::new(MAX_PENDING_CHANGES),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        metrics
            .sse_fanout_window_seconds
            .set(settings.window.as_secs_f64());
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            subscriptions: AtomicUsize::new(0),
            core: Arc::clone(&core),
            settings,
            status_capacity,
            metrics,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("statushub-fanout".to_owned())
            .spawn(move || fan_out(&core, &weak))?;
        Ok(Broadcaster {
            shared,
            incoming: broadcast::channel(INCOMING_CHANNEL_CAPACITY).0,
        })
    }

    /// Records a commit's changes for the next window; never waits, never
    /// wakes a stream. Costs O(campaigns and changes of the commit), and
    /// keeps only what someone follows.
    pub fn publish(&self, update: CommitUpdate) {
        let shared = &self.shared;
        // Who follows each campaign of the commit: (anyone, with statuses).
        let interest: HashMap<i64, (bool, bool)> = {
            let registry = lock(&shared.registry);
            update
                .campaigns
                .iter()
                .filter_map(|(campaign_pk, counters)| {
                    let routes = registry.routes(*campaign_pk, &counters.tenant_id);
                    let followed = routes.iter().any(Option::is_some);
                    let statuses = routes
                        .iter()
                        .flatten()
                        .any(|entry| entry.statuses.is_some());
                    followed.then_some((*campaign_pk, (true, statuses)))
                })
                .collect()
        };
        if interest.is_empty() {
            return;
        }
        let mut gathering = lock(&shared.core.gathering);
        let was_empty = gathering.pending.is_empty();
        for (campaign_pk, counters) in &update.campaigns {
            if interest.contains_key(campaign_pk) {
                gathering.pending.note_campaign(*campaign_pk, counters);
            }
        }
        for change in update.changes {
            let Some((_, statuses)) = interest.get(&change.campaign_pk()) else {
                continue;
            };
            gathering
                .pending
                .note_position(change.campaign_pk(), change.change.position());
            if *statuses {
                gathering.pending.push_change(change);
            }
        }
        if was_empty && !gathering.pending.is_empty() {
            shared.core.ready.notify_one();
        }
    }

    /// Tells whether any stream is connected, so committers build updates
    /// only when someone will read them.
    pub fn has_subscribers(&self) -> bool {
        self.shared.subscriptions.load(Ordering::Acquire) > 0
    }

    /// Follows `follow` from now on: every commit published after this call
    /// reaches the subscription (and perhaps some published just before,
    /// which a snapshot read after it already counts). With `statuses`, the
    /// subscription gets the topic's [`StatusBatch`]es; without, its
    /// metrics frames only.
    pub fn subscribe(&self, follow: Follow, statuses: bool) -> Subscription {
        let shared = &self.shared;
        let mut registry = lock(&shared.registry);
        let entry = registry.entry_or_insert(&follow);
        entry.subscribers += 1;
        let topic = Arc::clone(&entry.topic);
        let feed = if statuses {
            entry.status_subscribers += 1;
            let capacity = shared.status_capacity;
            let sender = entry
                .statuses
                .get_or_insert_with(|| broadcast::channel(capacity).0);
            Feed::Statuses(sender.subscribe())
        } else {
            // Subscribed to the wake-up first: a frame posted while the
            // cursor is read wakes the subscription, which then finds it
            // (or nothing newer than its cursor).
            let wake = topic.wake.subscribe();
            let cursor = lock(&topic.board).head();
            Feed::Metrics { wake, cursor }
        };
        shared.subscriptions.fetch_add(1, Ordering::AcqRel);
        shared
            .metrics
            .sse_topics
            .set(i64::try_from(registry.len()).unwrap_or(i64::MAX));
        drop(registry);
        Subscription {
            shared: Arc::clone(shared),
            follow,
            topic,
            feed,
        }
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

/// One stream's place in a topic; leaving the topic when dropped.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    follow: Follow,
    topic: Arc<Topic>,
    feed: Feed,
}

#[derive(Debug)]
enum Feed {
    /// The topic's board, read from `cursor` whenever `wake` changes.
    Metrics {
        wake: watch::Receiver<u64>,
        cursor: u64,
    },
    /// The topic's status channel.
    Statuses(broadcast::Receiver<Arc<StatusBatch>>),
}

/// What a subscription receives.
#[derive(Debug)]
pub enum Live {
    /// Metrics subscriptions: the frames posted since the last read, each
    /// campaign once, at its latest counters.
    Frames(Vec<Arc<PublishedCampaign>>),
    /// Status subscriptions: one window of the topic.
    Batch(Arc<StatusBatch>),
    /// Something was missed: a metrics subscription re-reads the counters;
    /// a status subscription cannot be complete any more.
    Behind,
    /// The broadcaster is gone.
    Closed,
}

impl Subscription {
    /// Waits for what the topic publishes next. Cancel-safe: nothing is
    /// taken from the topic before the wait is over.
    pub async fn next(&mut self) -> Live {
        match &mut self.feed {
            Feed::Metrics { wake, cursor } => loop {
                if wake.changed().await.is_err() {
                    return Live::Closed;
                }
                let mut frames = Vec::new();
                match lock(&self.topic.board).since(*cursor, &mut frames) {
                    Ok(head) => {
                        *cursor = head;
                        if !frames.is_empty() {
                            return Live::Frames(frames);
                        }
                    }
                    Err(behind) => {
                        *cursor = behind.head;
                        return Live::Behind;
                    }
                }
            },
            Feed::Statuses(receiver) => match receiver.recv().await {
                Ok(batch) => Live::Batch(batch),
                Err(broadcast::error::RecvError::Lagged(_)) => Live::Behind,
                Err(broadcast::error::RecvError::Closed) => Live::Closed,
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let statuses = matches!(self.feed, Feed::Statuses(_));
        let mut registry = lock(&self.shared.registry);
        if let Some(entry) = registry.entry_mut(&self.follow) {
            entry.subscribers = entry.subscribers.saturating_sub(1);
            if statuses {
                entry.status_subscribers = entry.status_subscribers.saturating_sub(1);
                if entry.status_subscribers == 0 {
                    // Its batches go with it.
                    entry.statuses = None;
                }
            }
            if entry.subscribers == 0 {
                registry.remove(&self.follow);
            }
        }
        self.shared.subscriptions.fetch_sub(1, Ordering::AcqRel);
        let topics = registry.len();
        self.shared
            .metrics
            .sse_topics
            .set(i64::try_from(topics).unwrap_or(i64::MAX));
    }
}

/// The fan-out thread: waits (without waking) until something was
/// published, lets the window pass since the last fan-out, then hands the
/// window to the topics. Ends when the broadcaster is dropped.
///
/// It is a thread of its own, not a task on the actix arbiter, because
/// that arbiter runs the DB actor and the campaign actors: the fan-out's
/// work (building frames and batches, waking thousands of streams) must
/// never delay a commit or a webhook's reply. Its work per window is
/// bounded by what changed in the window, not by the commit rate.
fn fan_out(core: &Core, shared: &Weak<Shared>) {
    let mut last: Option<Instant> = None;
    let mut window = Duration::ZERO;
    // Streams the last fan-out woke: the next window keeps their wake-ups
    // within the budget (see `coalesce::budget_window`).
    let mut woken = 0;
    loop {
        {
            let mut gathering = lock(&core.gathering);
            while gathering.pending.is_empty() && !gathering.closed {
                gathering = core
                    .ready
                    .wait(gathering)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if gathering.closed {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let settings = shared.settings;
        let queued = usize::try_from(shared.metrics.db_queue_depth.get()).unwrap_or(0);
        window = coalesce::next_window(settings.window, window, queued > settings.pressure_rows)
            .max(coalesce::budget_window(woken));
        shared
            .metrics
            .sse_fanout_window_seconds
            .set(window.as_secs_f64());
        // Coalesce: everything published until a window after the last
        // fan-out goes out together (the first change after a quiet spell
        // goes out at once).
        if let Some(due) = last.map(|last| last + window) {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let taken = lock(&core.gathering).pending.take();
        // Counted before it wakes anyone: a stream woken by a window never
        // finds it uncounted.
        shared.metrics.sse_fanout_windows.inc();
        woken = shared.deliver(taken);
        last = Some(Instant::now());
    }
}

/// One topic's share of a window.
#[derive(Debug)]
struct Target {
    topic: Arc<Topic>,
    statuses: Option<broadcast::Sender<Arc<StatusBatch>>>,
    changes: Vec<Arc<PublishedChange>>,
    frames: Vec<Arc<PublishedCampaign>>,
}

impl Shared {
    /// Hands a window to the topics that follow its campaigns: frames to
    /// their boards (waking their metrics subscribers once), and one batch
    /// to each status channel. Returns how many streams it woke.
    fn deliver(&self, window: Window) -> usize {
        let Window {
            campaigns,
            changes,
            gap,
        } = window;
        let mut targets: Vec<Target> = Vec::new();
        // Each campaign's targets (indices into `targets`).
        let mut routes: HashMap<i64, Vec<usize>> = HashMap::with_capacity(campaigns.len());
        {
            let registry = lock(&self.registry);
            let mut index: HashMap<*const Topic, usize> = HashMap::new();
            let mut target_of = |entry: &Entry| {
                *index.entry(Arc::as_ptr(&entry.topic)).or_insert_with(|| {
                    targets.push(Target {
                        topic: Arc::clone(&entry.topic),
                        statuses: entry.statuses.clone(),
                        changes: Vec::new(),
                        frames: Vec::new(),
                    });
                    targets.len() - 1
                })
            };
            for (campaign_pk, dirty) in &campaigns {
                let route: Vec<usize> = registry
                    .routes(*campaign_pk, &dirty.counters.tenant_id)
                    .into_iter()
                    .flatten()
                    .map(&mut target_of)
                    .collect();
                routes.insert(*campaign_pk, route);
            }
            if gap {
                // Every status subscriber may have missed something.
                let entries = registry
                    .campaigns
                    .values()
                    .chain(registry.tenants.values())
                    .chain(registry.everything.as_ref());
                for entry in entries.filter(|entry| entry.statuses.is_some()) {
                    target_of(entry);
                }
            }
        }
        for change in changes {
            let Some(route) = routes.get(&change.campaign_pk()) else {
                continue;
            };
            let change = Arc::new(change);
            for &target in route {
                if let Some(target) = targets.get_mut(target) {
                    if target.statuses.is_some() {
                        target.changes.push(Arc::clone(&change));
                    }
                }
            }
        }
        for (campaign_pk, dirty) in campaigns {
            let frame = Arc::new(PublishedCampaign::new(
                campaign_pk,
                dirty.counters,
                dirty.position,
            ));
            for &target in routes.get(&campaign_pk).into_iter().flatten() {
                if let Some(target) = targets.get_mut(target) {
                    target.frames.push(Arc::clone(&frame));
                }
            }
        }
        let now = Instant::now();
        let mut woken = 0;
        for target in targets {
            // Statuses first, then the counters they led to.
            if let Some(statuses) = &target.statuses {
                woken += statuses.receiver_count();
                let _ = statuses.send(Arc::new(StatusBatch {
                    changes: target.changes,
                    campaigns: target.frames.clone(),
                    gap,
                }));
            }
            if !target.frames.is_empty() {
                let head = {
                    let mut board = lock(&target.topic.board);
                    for frame in target.frames {
                        board.post(frame, now);
                    }
                    board.prune(now, BOARD_KEEP_FOR, MAX_BOARD_FRAMES);
                    board.head()
                };
                woken += target.topic.wake.receiver_count();
                target.topic.wake.send_replace(head);
            }
        }
        woken
    }
}
