//! The status algebra: what a message has seen, what that makes its current
//! status, and how one event changes campaign counters. Pure: no I/O.
//!
//! A message keeps the *set* of statuses it has seen (closed under the
//! implications `clicked ⇒ read ⇒ delivered ⇒ sent` and `complained ⇒
//! delivered`) with the first provider timestamp of each status it observed.
//! Set union and `min` of timestamps are commutative, associative and
//! idempotent, so the final state never depends on the order or the number of
//! times events arrive.

use serde::{Deserialize, Serialize};

/// A status a provider can report about a message.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sent,
    Delivered,
    Read,
    Clicked,
    Complained,
    Failed,
}

impl Status {
    /// Every status, in bit order.
    pub const ALL: [Status; 6] = [
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Clicked,
        Status::Complained,
        Status::Failed,
    ];

    /// Returns the bit this status occupies in a [`StatusSet`] mask.
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Returns the status with its implications (`read` gives `read`,
    /// `delivered` and `sent`), as a mask.
    pub const fn closure(self) -> u8 {
        let sent = Status::Sent.bit();
        let delivered = Status::Delivered.bit() | sent;
        let read = Status::Read.bit() | delivered;
        match self {
            Status::Sent => sent,
            Status::Delivered => delivered,
            Status::Read => read,
            Status::Clicked => Status::Clicked.bit() | read,
            Status::Complained => Status::Complained.bit() | delivered,
            Status::Failed => Status::Failed.bit(),
        }
    }

    /// Returns the lowercase wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Clicked => "clicked",
            Status::Complained => "complained",
            Status::Failed => "failed",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message's current status, derived from its [`StatusSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CurrentStatus {
    Pending,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl CurrentStatus {
    /// Every current status, in the order of `by_status`.
    pub const ALL: [CurrentStatus; 5] = [
        CurrentStatus::Pending,
        CurrentStatus::Sent,
        CurrentStatus::Delivered,
        CurrentStatus::Read,
        CurrentStatus::Failed,
    ];

    /// Returns the lowercase wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CurrentStatus::Pending => "pending",
            CurrentStatus::Sent => "sent",
            CurrentStatus::Delivered => "delivered",
            CurrentStatus::Read => "read",
            CurrentStatus::Failed => "failed",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        CurrentStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

impl std::fmt::Display for CurrentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The statuses a message has seen, closed under the implications, with the
/// first provider timestamp (Unix ms) of each status that was observed
/// directly. An implied status has no timestamp of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusSet {
    mask: u8,
    first_seen_ms: [Option<i64>; 6],
}

impl StatusSet {
    /// The set of a message no provider has reported on yet.
    pub const EMPTY: StatusSet = StatusSet {
        mask: 0,
        first_seen_ms: [None; 6],
    };

    /// Rebuilds a set from its stored parts. The mask is closed under the
    /// implications again, so a hand-edited row cannot break the invariant.
    pub fn from_parts(mask: u8, first_seen_ms: [Option<i64>; 6]) -> Self {
        let closed = Status::ALL
            .iter()
            .filter(|status| mask & status.bit() != 0)
            .fold(0, |acc, status| acc | status.closure());
        StatusSet {
            mask: closed,
            first_seen_ms,
        }
    }

    /// Returns the stored mask (closed under the implications).
    pub const fn mask(&self) -> u8 {
        self.mask
    }

    /// Returns the first observed timestamp per status, in [`Status::ALL`] order.
    pub const fn first_seen_ms(&self) -> [Option<i64>; 6] {
        self.first_seen_ms
    }

    /// Returns the first observed timestamp of `status`, if it was observed.
    pub const fn first_seen(&self, status: Status) -> Option<i64> {
        self.first_seen_ms[status as usize]
    }

    /// Tells whether `status` was seen, directly or by implication.
    pub const fn contains(&self, status: Status) -> bool {
        self.mask & status.bit() != 0
    }

    /// Returns this set after observing `status` at `timestamp_ms`.
    #[must_use]
    pub fn with(&self, status: Status, timestamp_ms: i64) -> StatusSet {
        let mut next = *self;
        next.mask |= status.closure();
        let slot = &mut next.first_seen_ms[status as usize];
        *slot = Some(slot.map_or(timestamp_ms, |first| first.min(timestamp_ms)));
        next
    }

    /// Returns the current status: `read` if read was seen, else
    /// `delivered`, else `failed`, else `sent`, else `pending`.
    pub const fn current(&self) -> CurrentStatus {
        if self.contains(Status::Read) {
            CurrentStatus::Read
        } else if self.contains(Status::Delivered) {
            CurrentStatus::Delivered
        } else if self.contains(Status::Failed) {
            CurrentStatus::Failed
        } else if self.contains(Status::Sent) {
            CurrentStatus::Sent
        } else {
            CurrentStatus::Pending
        }
    }

    /// Returns what one message in this state contributes to its campaign's
    /// counters.
    pub fn tally(&self) -> Tally {
        let funnel = |status| i64::from(self.contains(status));
        let current = self.current();
        let by_status = CurrentStatus::ALL.map(|each| i64::from(each == current));
        Tally {
            total: 1,
            sent: funnel(Status::Sent),
            delivered: funnel(Status::Delivered),
            read: funnel(Status::Read),
            clicked: funnel(Status::Clicked),
            complained: funnel(Status::Complained),
            by_status,
        }
    }
}

/// Counter contributions: of one message (see [`StatusSet::tally`]), a
/// difference of two (a transition's delta), or a sum over a campaign.
///
/// `failed` is not a field: it is `by_status[Failed]`, the messages whose
/// current status is failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub total: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub clicked: i64,
    pub complained: i64,
    /// Messages per current status, in [`CurrentStatus::ALL`] order.
    pub by_status: [i64; 5],
}

impl Tally {
    /// Returns the tally of a transition: what `after` contributes minus what
    /// `before` did. A registration is the transition from nothing to
    /// [`StatusSet::EMPTY`].
    pub fn transition(before: Option<&StatusSet>, after: &StatusSet) -> Tally {
        let before = before.map(StatusSet::tally).unwrap_or_default();
        after.tally().minus(&before)
    }

    /// Returns the messages whose current status is `status`.
    pub fn current(&self, status: CurrentStatus) -> i64 {
        self.by_status[status as usize]
    }

    /// Returns `self - other`, field by field.
    #[must_use]
    pub fn minus(&self, other: &Tally) -> Tally {
        self.zip(other, |a, b| a - b)
    }

    /// Returns `self + other`, field by field.
    #[must_use]
    pub fn plus(&self, other: &Tally) -> Tally {
        self.zip(other, |a, b| a + b)
    }

    /// Tells whether every field is zero.
    pub fn is_zero(&self) -> bool {
        *self == Tally::default()
    }

    fn zip(&self, other: &Tally, op: impl Fn(i64, i64) -> i64) -> Tally {
        Tally {
            total: op(self.total, other.total),
            sent: op(self.sent, other.sent),
            delivered: op(self.delivered, other.delivered),
            read: op(self.read, other.read),
            clicked: op(self.clicked, other.clicked),
            complained: op(self.complained, other.complained),
            by_status: std::array::from_fn(|index| {
                op(self.by_status[index], other.by_status[index])
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Messages the generated histories are about.
    const MESSAGES: usize = 8;

    /// One provider notification as it reaches the algebra: (message,
    /// status, provider timestamp). A redelivery is the same triple again.
    type Notification = (usize, Status, i64);

    /// What each WhatsApp status value means. Meta keys a notification by
    /// message id and status value, so each value comes at most once per
    /// message, with one timestamp; a second `read` would be a redelivery.
    /// `played` beside `read` is how the same status comes twice.
    const WHATSAPP: [Status; 5] = [
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Read,
        Status::Failed,
    ];

    /// What SES event types mean (without the timeline-only ones). Each SES
    /// event comes in its own SNS notification (its own `MessageId`), so
    /// the same status can come again with another timestamp: a second
    /// open, a bounce after a delivery delay.
    const SES: [Status; 7] = [
        Status::Sent,
        Status::Delivered,
        Status::Read,
        Status::Clicked,
        Status::Failed,
        Status::Complained,
        Status::Failed,
    ];

    /// The distinct notifications of a WhatsApp message.
    fn whatsapp_message(message: usize) -> impl Strategy<Value = Vec<Notification>> {
        prop::collection::btree_map(0..WHATSAPP.len(), 0i64..1_000, 0..=WHATSAPP.len()).prop_map(
            move |values| {
                values
                    .into_iter()
                    .map(|(value, ts)| (message, WHATSAPP[value], ts))
                    .collect()
            },
        )
    }

    /// The distinct notifications of an email message.
    fn email_message(message: usize) -> impl Strategy<Value = Vec<Notification>> {
        prop::collection::vec((prop::sample::select(SES.to_vec()), 0i64..1_000), 0..8).prop_map(
            move |events| {
                events
                    .into_iter()
                    .map(|(status, ts)| (message, status, ts))
                    .collect()
            },
        )
    }

    /// The distinct notifications about [`MESSAGES`] messages, each message
    /// on one channel, in any order.
    fn notifications() -> impl Strategy<Value = Vec<Notification>> {
        (0..MESSAGES)
            .map(|message| prop_oneof![whatsapp_message(message), email_message(message)])
            .collect::<Vec<_>>()
            .prop_map(|messages| messages.into_iter().flatten().collect::<Vec<_>>())
            .prop_shuffle()
    }

    fn replay(events: &[Notification]) -> Vec<StatusSet> {
        let mut messages = vec![StatusSet::EMPTY; MESSAGES];
        for &(message, status, ts) in events {
            messages[message] = messages[message].with(status, ts);
        }
        messages
    }

    fn counters(events: &[Notification]) -> Tally {
        let mut messages = vec![StatusSet::EMPTY; MESSAGES];
        let mut counters = messages.iter().fold(Tally::default(), |acc, message| {
            acc.plus(&Tally::transition(None, message))
        });
        for &(message, status, ts) in events {
            let after = messages[message].with(status, ts);
            counters = counters.plus(&Tally::transition(Some(&messages[message]), &after));
            messages[message] = after;
        }
        counters
    }

    fn recount(messages: &[StatusSet]) -> Tally {
        messages
            .iter()
            .fold(Tally::default(), |acc, message| acc.plus(&message.tally()))
    }

    #[test]
    fn wire_names_parse_back() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        for status in CurrentStatus::ALL {
            assert_eq!(CurrentStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("pending"), None);
        assert_eq!(CurrentStatus::parse("clicked"), None);
    }

    #[test]
    fn current_status_follows_precedence() {
        let at = |statuses: &[Status]| {
            statuses
                .iter()
                .fold(StatusSet::EMPTY, |set, status| set.with(*status, 1))
                .current()
        };
        assert_eq!(at(&[]), CurrentStatus::Pending);
        assert_eq!(at(&[Status::Sent]), CurrentStatus::Sent);
        assert_eq!(at(&[Status::Failed]), CurrentStatus::Failed);
        assert_eq!(at(&[Status::Sent, Status::Failed]), CurrentStatus::Failed);
        assert_eq!(
            at(&[Status::Failed, Status::Delivered]),
            CurrentStatus::Delivered
        );
        assert_eq!(
            at(&[Status::Delivered, Status::Failed]),
            CurrentStatus::Delivered
        );
        assert_eq!(at(&[Status::Read]), CurrentStatus::Read);
        assert_eq!(at(&[Status::Clicked]), CurrentStatus::Read);
        assert_eq!(at(&[Status::Complained]), CurrentStatus::Delivered);
    }

    #[test]
    fn implications_fill_the_funnel_without_timestamps() {
        let set = StatusSet::EMPTY.with(Status::Clicked, 50);
        assert!(set.contains(Status::Read));
        assert!(set.contains(Status::Delivered));
        assert!(set.contains(Status::Sent));
        assert!(!set.contains(Status::Complained));
        assert!(!set.contains(Status::Failed));
        assert_eq!(set.first_seen(Status::Clicked), Some(50));
        assert_eq!(set.first_seen(Status::Read), None);
        let complained = StatusSet::EMPTY.with(Status::Complained, 1);
        assert!(complained.contains(Status::Delivered) && !complained.contains(Status::Read));
    }

    #[test]
    fn first_timestamp_wins_regardless_of_arrival() {
        let late_first = StatusSet::EMPTY
            .with(Status::Read, 20)
            .with(Status::Read, 10);
        let early_first = StatusSet::EMPTY
            .with(Status::Read, 10)
            .with(Status::Read, 20);
        assert_eq!(late_first, early_first);
        assert_eq!(late_first.first_seen(Status::Read), Some(10));
    }

    #[test]
    fn from_parts_closes_the_mask() {
        let set = StatusSet::from_parts(Status::Read.bit(), [None; 6]);
        assert_eq!(set.mask(), Status::Read.closure());
    }

    #[test]
    fn registration_counts_one_pending_message() {
        let tally = Tally::transition(None, &StatusSet::EMPTY);
        assert_eq!(tally.total, 1);
        assert_eq!(tally.current(CurrentStatus::Pending), 1);
        assert_eq!(tally.sent, 0);
    }

    proptest! {
        /// Any arrival order of the same notifications gives the same final
        /// states and counters.
        #[test]
        fn order_does_not_matter(
            (events, shuffled) in notifications()
                .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle())),
        ) {
            prop_assert_eq!(replay(&events), replay(&shuffled));
            prop_assert_eq!(counters(&events), counters(&shuffled));
        }

        /// A redelivery (the same notification again, at any later point)
        /// changes nothing, even when the idempotency key did not catch it.
        #[test]
        fn redelivery_does_not_matter(
            events in notifications().prop_filter("something to redeliver", |events| !events.is_empty()),
            redeliveries in prop::collection::vec(
                (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                0..32,
            ),
        ) {
            let mut delivered = events.clone();
            for (which, at) in redeliveries {
                let original = which.index(events.len());
                let position = delivered
                    .iter()
                    .position(|event| *event == events[original])
                    .unwrap_or(0);
                // Anywhere after a delivery of the same notification.
                let later = position + 1 + at.index(delivered.len() - position);
                delivered.insert(later, events[original]);
            }
            prop_assert_eq!(replay(&events), replay(&delivered));
            prop_assert_eq!(counters(&events), counters(&delivered));
        }

        /// Counters kept by deltas always equal a recount of the final states.
        #[test]
        fn deltas_equal_a_recount(events in notifications()) {
            let final_states = replay(&events);
            prop_assert_eq!(counters(&events), recount(&final_states));
        }

        /// Funnel counts are monotone: the implications keep them nested.
        #[test]
        fn funnel_is_nested(events in notifications()) {
            let tally = counters(&events);
            prop_assert!(tally.clicked <= tally.read);
            prop_assert!(tally.read <= tally.delivered);
            prop_assert!(tally.complained <= tally.delivered);
            prop_assert!(tally.delivered <= tally.sent);
            prop_assert_eq!(tally.by_status.iter().sum::<i64>(), tally.total);
        }
    }
}
