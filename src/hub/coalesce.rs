//! The pure parts of the fan-out (see [`super::broadcast`]): what one
//! coalescing window gathers from the commits published during it
//! ([`Pending`]), the latest-wins log of metrics frames each topic keeps for
//! its metrics subscribers ([`BoardLog`]), and how long the next window is
//! ([`next_window`]). No thread, channel or clock is touched here (instants
//! are passed in), so each is tested directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::broadcast::{PublishedCampaign, PublishedChange};
use crate::domain::CampaignCounters;
use crate::store::EventPosition;

/// A campaign changed during the window: its latest counters, and the
/// highest position among the changes of it the window saw.
#[derive(Clone, Debug)]
pub(super) struct Dirty {
    pub counters: Arc<CampaignCounters>,
    pub position: EventPosition,
}

/// What one window gathered, taken at once by the fan-out.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Each followed campaign that changed, once, with its latest counters.
    pub campaigns: HashMap<i64, Dirty>,
    /// The changes of campaigns someone follows with statuses, in the order
    /// they were published (commit order).
    pub changes: Vec<PublishedChange>,
    /// Changes were dropped before these (the window outgrew its bound):
    /// status subscribers cannot be complete and must resume.
    pub gap: bool,
}

/// The window being gathered. Publishing adds to it in O(campaigns and
/// changes of the commit); the fan-out takes it whole once per window.
/// Bounded: counters by the number of campaigns (latest wins), changes by
/// `max_changes` (beyond it they are dropped and the window says so).
#[derive(Debug)]
pub(super) struct Pending {
    window: Window,
    max_changes: usize,
}

impl Pending {
    /// Returns an empty window that holds at most `max_changes` changes.
    pub fn new(max_changes: usize) -> Self {
        Pending {
            window: Window::default(),
            max_changes,
        }
    }

    /// Tells whether nothing waits for the fan-out.
    pub fn is_empty(&self) -> bool {
        self.window.campaigns.is_empty() && self.window.changes.is_empty() && !self.window.gap
    }

    /// Records a campaign's counters after a commit; the highest version
    /// wins (a window carries only a campaign's latest state).
    pub fn note_campaign(&mut self, campaign_pk: i64, counters: &Arc<CampaignCounters>) {
        self.window
            .campaigns
            .entry(campaign_pk)
            .and_modify(|dirty| {
                if dirty.counters.version < counters.version {
                    dirty.counters = Arc::clone(counters);
                }
            })
            .or_insert_with(|| Dirty {
                counters: Arc::clone(counters),
                position: EventPosition::default(),
            });
    }

    /// Raises the position of a recorded campaign to that of one of its
    /// changes (tenant streams without statuses take their ids from it).
    pub fn note_position(&mut self, campaign_pk: i64, position: EventPosition) {
        if let Some(dirty) = self.window.campaigns.get_mut(&campaign_pk) {
            dirty.position = dirty.position.max(position);
        }
    }

    /// Queues a change for the status subscribers. Past the bound the
    /// changes gathered so far are dropped and the window marked: memory
    /// stays bounded when the fan-out cannot keep up, and status streams
    /// learn that they missed changes instead of silently skipping them.
    pub fn push_change(&mut self, change: PublishedChange) {
        if self.window.changes.len() >= self.max_changes {
            self.window.changes = Vec::new();
            self.window.gap = true;
        }
        self.window.changes.push(change);
    }

    /// Takes what the window gathered, leaving it empty.
    pub fn take(&mut self) -> Window {
        std::mem::take(&mut self.window)
    }
}

/// The latest metrics frame of each campaign of a topic, in the order they
/// were posted, so that a subscriber woken after any number of windows
/// reads each changed campaign once, at its latest state: it never lags
/// and never receives a stale frame. Entries older than a retention (or
/// beyond a count) are dropped; a subscriber that had not read them is
/// told it is [`Behind`] and re-reads the counters.
#[derive(Debug, Default)]
pub(super) struct BoardLog {
    /// Each campaign's latest frame, with its sequence number.
    latest: HashMap<i64, Posted>,
    /// Sequence number → campaign, one entry per campaign (its latest).
    order: BTreeMap<u64, i64>,
    /// The last sequence number given.
    head: u64,
    /// Entries at or below this were dropped unread by someone perhaps.
    pruned_through: u64,
}

#[derive(Debug)]
struct Posted {
    seq: u64,
    at: Instant,
    frame: Arc<PublishedCampaign>,
}

/// A subscriber's cursor is older than what the board still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Behind {
    /// Where the subscriber continues once it has re-read the counters.
    pub head: u64,
}

impl BoardLog {
    /// The last sequence number posted: a new subscriber's cursor.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Frames held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    /// Posts a campaign's frame, replacing its older one; a frame no newer
    /// than the one held is ignored (versions never go backwards).
    pub fn post(&mut self, frame: Arc<PublishedCampaign>, at: Instant) {
        let campaign_pk = frame.campaign_pk;
        if let Some(held) = self.latest.get(&campaign_pk) {
            if held.frame.counters.version >= frame.counters.version {
                return;
            }
            self.order.remove(&held.seq);
        }
        self.head += 1;
        self.order.insert(self.head, campaign_pk);
        self.latest.insert(
            campaign_pk,
            Posted {
                seq: self.head,
                at,
                frame,
            },
        );
    }

    /// Appends to `out` the frames posted after `cursor` (each campaign
    /// once, its latest) and returns the new cursor.
    pub fn since(&self, cursor: u64, out: &mut Vec<Arc<PublishedCampaign>>) -> Result<u64, Behind> {
        if cursor < self.pruned_through {
            return Err(Behind { head: self.head });
        }
        out.extend(
            self.order
                .range(cursor.saturating_add(1)..)
                .filter_map(|(_, campaign_pk)| self.latest.get(campaign_pk))
                .map(|posted| Arc::clone(&posted.frame)),
        );
        Ok(self.head)
    }

    /// Drops the frames posted before `now - keep_for`, and the oldest
    /// beyond `max_entries`. Subscribers read a board as soon as it changes,
    /// so only one stuck for that long can miss what is dropped.
    pub fn prune(&mut self, now: Instant, keep_for: Duration, max_entries: usize) {
        while let Some((&seq, &campaign_pk)) = self.order.first_key_value() {
            let expired = self
                .latest
                .get(&campaign_pk)
                .is_none_or(|posted| now.saturating_duration_since(posted.at) > keep_for);
            if !expired && self.order.len() <= max_entries {
                return;
            }
            self.order.remove(&seq);
            self.latest.remove(&campaign_pk);
            self.pruned_through = seq;
        }
    }
}

/// How many times the configured window the fan-out may stretch to while
/// ingestion is backed up.
pub(super) const MAX_STRETCH: u32 = 8;

/// Returns the next window: the configured one, or, while the write queue
/// is backed up (`pressured`), twice the current one, up to
/// [`MAX_STRETCH`] times the configured one. Dashboards then get fewer,
/// still latest, metrics frames, and their cost drops until ingestion has
/// caught up: the audience never starves the webhooks that feed it.
pub(super) fn next_window(configured: Duration, current: Duration, pressured: bool) -> Duration {
    if pressured {
        (current.max(configured) * 2).min(configured * MAX_STRETCH)
    } else {
        configured
    }
}

/// Stream wake-ups per second the fan-out aims to stay under. Each is a
/// stream polled and a frame written to its socket (tens of microseconds of
/// CPU with the reader's share), so 20,000 a second is a fraction of one of
/// this machine's two cores: the rest stays with the webhooks.
pub(super) const WAKEUPS_PER_SECOND: f64 = 20_000.0;

/// Longest window the wake-up budget may stretch to.
pub(super) const MAX_BUDGET_WINDOW: Duration = Duration::from_secs(2);

/// Returns the window that keeps a fan-out of `woken` streams per window
/// under [`WAKEUPS_PER_SECOND`] (at most [`MAX_BUDGET_WINDOW`]): with 1,000
/// subscribers of changing campaigns it is 50 ms, under the default
/// window, so nothing changes; with 10,000 it is 500 ms, so each dashboard
/// gets two `metrics` events a second instead of ten, still ending on the
/// latest counters, and the audience never starves the webhooks.
pub(super) fn budget_window(woken: usize) -> Duration {
    Duration::from_secs_f64(woken as f64 / WAKEUPS_PER_SECOND).min(MAX_BUDGET_WINDOW)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::domain::{Channel, CurrentStatus, Tally};
    use crate::store::StatusChange;

    fn counters(campaign: &str, version: i64) -> Arc<CampaignCounters> {
        Arc::new(CampaignCounters::from_tally(
            "t1",
            campaign,
            version,
            &Tally::default(),
            0,
        ))
    }

    fn frame(campaign_pk: i64, version: i64) -> Arc<PublishedCampaign> {
        Arc::new(PublishedCampaign::new(
            campaign_pk,
            counters(&format!("c{campaign_pk}"), version),
            EventPosition::default(),
        ))
    }

    fn change(campaign_pk: i64, event_id: i64) -> PublishedChange {
        PublishedChange {
            counters: counters(&format!("c{campaign_pk}"), event_id),
            change: StatusChange {
                event_id,
                xact: 0,
                campaign_pk,
                version: event_id,
                channel: Channel::Whatsapp,
                provider_message_id: format!("wamid.{event_id}"),
                event: "read".to_owned(),
                status: CurrentStatus::Read,
                provider_ts_ms: 0,
            },
            encoded: OnceLock::new(),
        }
    }

    fn versions(frames: &[Arc<PublishedCampaign>]) -> Vec<(i64, i64)> {
        frames
            .iter()
            .map(|frame| (frame.campaign_pk, frame.counters.version))
            .collect()
    }

    #[test]
    fn a_window_keeps_each_campaigns_latest_counters_once() {
        let mut pending = Pending::new(100);
        assert!(pending.is_empty());
        for version in [3, 5, 4] {
            pending.note_campaign(1, &counters("c1", version));
        }
        pending.note_campaign(2, &counters("c2", 7));

        let window = pending.take();

        assert_eq!(window.campaigns.len(), 2);
        assert_eq!(window.campaigns[&1].counters.version, 5);
        assert_eq!(window.campaigns[&2].counters.version, 7);
        assert!(pending.is_empty(), "taking empties the window");
    }

    #[test]
    fn a_window_keeps_changes_in_order_and_the_highest_position_per_campaign() {
        let mut pending = Pending::new(100);
        pending.note_campaign(1, &counters("c1", 1));
        for event_id in [10, 11, 12] {
            pending.note_position(1, EventPosition { xact: 0, event_id });
            pending.push_change(change(1, event_id));
        }
        // A campaign nobody follows was not noted: its position is ignored.
        pending.note_position(
            9,
            EventPosition {
                xact: 0,
                event_id: 99,
            },
        );

        let window = pending.take();

        let ids: Vec<i64> = window.changes.iter().map(|c| c.change.event_id).collect();
        assert_eq!(ids, [10, 11, 12]);
        assert_eq!(window.campaigns[&1].position.event_id, 12);
        assert!(!window.campaigns.contains_key(&9));
        assert!(!window.gap);
    }

    #[test]
    fn a_window_past_its_bound_drops_its_changes_and_says_so() {
        let mut pending = Pending::new(3);
        pending.note_campaign(1, &counters("c1", 1));
        for event_id in 1..=5 {
            pending.push_change(change(1, event_id));
        }

        let window = pending.take();

        assert!(window.gap);
        assert!(window.changes.len() <= 3, "{}", window.changes.len());
        assert!(pending.take().changes.is_empty());
    }

    #[test]
    fn a_board_gives_each_campaign_once_at_its_latest_state() {
        let now = Instant::now();
        let mut board = BoardLog::default();
        let start = board.head();
        board.post(frame(1, 1), now);
        board.post(frame(2, 1), now);
        board.post(frame(1, 2), now);
        board.post(frame(1, 2), now); // not newer: ignored
        board.post(frame(2, 0), now); // older: ignored

        let mut frames = Vec::new();
        let cursor = board.since(start, &mut frames).unwrap();

        assert_eq!(versions(&frames), [(2, 1), (1, 2)]);
        assert_eq!(cursor, board.head());
        // Nothing new: nothing read.
        let mut again = Vec::new();
        assert_eq!(board.since(cursor, &mut again), Ok(cursor));
        assert!(again.is_empty());
        // Only what changed after the cursor.
        board.post(frame(2, 3), now);
        let mut later = Vec::new();
        board.since(cursor, &mut later).unwrap();
        assert_eq!(versions(&later), [(2, 3)]);
    }

    #[test]
    fn a_board_drops_old_frames_and_tells_a_reader_that_missed_them() {
        let start = Instant::now();
        let mut board = BoardLog::default();
        let stuck = board.head();
        board.post(frame(1, 1), start);
        let mut frames = Vec::new();
        let reading = board.since(stuck, &mut frames).unwrap();
        board.post(frame(2, 1), start + Duration::from_secs(20));

        board.prune(
            start + Duration::from_secs(40),
            Duration::from_secs(30),
            100,
        );

        assert_eq!(board.len(), 1, "campaign 1's frame is older than 30 s");
        // A reader that had read campaign 1 misses nothing...
        let mut frames = Vec::new();
        assert!(board.since(reading, &mut frames).is_ok());
        assert_eq!(versions(&frames), [(2, 1)]);
        // ...one that had not is behind.
        let mut frames = Vec::new();
        assert_eq!(
            board.since(stuck, &mut frames),
            Err(Behind { head: board.head() })
        );
    }

    #[test]
    fn a_board_holds_at_most_its_bound_of_campaigns() {
        let now = Instant::now();
        let mut board = BoardLog::default();
        for campaign_pk in 0..10 {
            board.post(frame(campaign_pk, 1), now);
        }

        board.prune(now, Duration::from_secs(30), 4);

        assert_eq!(board.len(), 4);
        let mut frames = Vec::new();
        let cursor = board.head() - 4;
        board.since(cursor, &mut frames).unwrap();
        assert_eq!(versions(&frames), [(6, 1), (7, 1), (8, 1), (9, 1)]);
    }

    #[test]
    fn the_window_stretches_while_ingestion_is_backed_up_and_recovers_at_once() {
        let configured = Duration::from_millis(100);
        let mut window = configured;
        let mut seen = Vec::new();
        for _ in 0..5 {
            window = next_window(configured, window, true);
            seen.push(window.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 800, 800]);
        assert_eq!(next_window(configured, window, false), configured);
        assert_eq!(
            next_window(Duration::ZERO, Duration::ZERO, true),
            Duration::ZERO
        );
    }

    #[test]
    fn the_wake_up_budget_widens_the_window_only_for_large_audiences() {
        assert_eq!(budget_window(0), Duration::ZERO);
        assert_eq!(budget_window(1_000), Duration::from_millis(50));
        assert_eq!(budget_window(10_000), Duration::from_millis(500));
        assert_eq!(budget_window(1_000_000), MAX_BUDGET_WINDOW);
    }
}
