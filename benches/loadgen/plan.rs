//! What a run sends, decided before it starts: the campaigns and their
//! messages, each message's lifecycle, the order of the statuses, and what
//! the hub's counters must then say.
//!
//! - Messages: `--campaigns` C campaigns of `--messages` M messages each;
//!   message `i` of campaign `c` has the global number `c × M + i`.
//! - Lifecycles, by `i mod 20`, the same mix in every campaign:
//!   WhatsApp 14 read (sent, delivered, read), 4 delivered, 1 failed (sent,
//!   failed), 1 only sent; SES 6 clicked (Send, Delivery, Open, Click), 8
//!   opened, 3 delivered, 1 complained (Send, Delivery, Complaint), 1
//!   bounced (Send, Bounce), 1 only sent.
//! - The in-order list of notifications goes stage by stage, as a bulk send
//!   reports: every message's first status, then every second one, and so
//!   on; within a stage message by message, campaigns interleaved (message
//!   0 of every campaign, then message 1, …). Every notification is unique:
//!   its own WhatsApp idempotency key (message id + status) or SNS
//!   `MessageId`.
//! - `--order shuffled` keeps the slots of each message in that list but
//!   deals its statuses into them in a random order (a read may come before
//!   its delivery); `--order duplicated` keeps the list in order and plays
//!   every notification a second time at a uniformly random later point.
//! - The expected counters follow from the notifications the hub
//!   acknowledged, whatever their order or number, by the status rules of
//!   the specification, written out again here (not taken from the hub's
//!   code): a message's seen set is the union of its statuses closed under
//!   clicked ⇒ read ⇒ delivered ⇒ sent and complained ⇒ delivered; its
//!   current status is read, else delivered, else failed, else sent, else
//!   pending; `sent`…`complained` count messages that reached the stage,
//!   `failed` and `by_status` count current statuses.

use rand::Rng as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};

use super::options::{Channel, Order};

/// A stage of a message's life, as the generator names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Sent,
    Delivered,
    Read,
    Clicked,
    Complained,
    Failed,
}

/// Seen-set bits.
const SENT: u8 = 1;
const DELIVERED: u8 = 2;
const READ: u8 = 4;
const CLICKED: u8 = 8;
const COMPLAINED: u8 = 16;
const FAILED: u8 = 32;

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Sent,
        Stage::Delivered,
        Stage::Read,
        Stage::Clicked,
        Stage::Complained,
        Stage::Failed,
    ];

    /// The stage with what it implies, as seen-set bits.
    pub const fn closure(self) -> u8 {
        match self {
            Stage::Sent => SENT,
            Stage::Delivered => DELIVERED | SENT,
            Stage::Read => READ | DELIVERED | SENT,
            Stage::Clicked => CLICKED | READ | DELIVERED | SENT,
            Stage::Complained => COMPLAINED | DELIVERED | SENT,
            Stage::Failed => FAILED,
        }
    }

    /// The provider's name of the event: WhatsApp's `status`, SES's
    /// `eventType`.
    pub const fn event(self, channel: Channel) -> &'static str {
        match (channel, self) {
            (Channel::Whatsapp, Stage::Sent) => "sent",
            (Channel::Whatsapp, Stage::Delivered) => "delivered",
            (Channel::Whatsapp, Stage::Read) => "read",
            (Channel::Whatsapp, Stage::Failed) => "failed",
            // WhatsApp lifecycles never click or complain.
            (Channel::Whatsapp, Stage::Clicked) => "clicked",
            (Channel::Whatsapp, Stage::Complained) => "complained",
            (Channel::Ses, Stage::Sent) => "Send",
            (Channel::Ses, Stage::Delivered) => "Delivery",
            (Channel::Ses, Stage::Read) => "Open",
            (Channel::Ses, Stage::Clicked) => "Click",
            (Channel::Ses, Stage::Complained) => "Complaint",
            (Channel::Ses, Stage::Failed) => "Bounce",
        }
    }

    /// The stage a provider's event name stands for.
    pub fn from_event(channel: Channel, event: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.event(channel) == event)
    }

    /// Position in [`Stage::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Seconds after the send that the provider stamps on this event.
    pub const fn offset_seconds(self) -> i64 {
        match self {
            Stage::Sent => 0,
            Stage::Delivered | Stage::Failed => 1,
            Stage::Read => 2,
            Stage::Clicked | Stage::Complained => 3,
        }
    }
}

/// The statuses message `index` (of any campaign) goes through, in order.
pub fn lifecycle(channel: Channel, index: usize) -> &'static [Stage] {
    use Stage::*;
    let slot = index % 20;
    match channel {
        Channel::Whatsapp => match slot {
            0..=13 => &[Sent, Delivered, Read],
            14..=17 => &[Sent, Delivered],
            18 => &[Sent, Failed],
            _ => &[Sent],
        },
        Channel::Ses => match slot {
            0..=5 => &[Sent, Delivered, Read, Clicked],
            6..=13 => &[Sent, Delivered, Read],
            14..=16 => &[Sent, Delivered],
            17 => &[Sent, Delivered, Complained],
            18 => &[Sent, Failed],
            _ => &[Sent],
        },
    }
}

/// One provider notification: one status of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    pub campaign: u32,
    pub index: u32,
    pub stage: Stage,
}

/// Everything a run may send.
#[derive(Debug)]
pub struct Plan {
    pub channel: Channel,
    pub campaigns: usize,
    /// Messages per campaign.
    pub messages: usize,
    pub per_request: usize,
    /// Every notification once, in order; a notification's number is its
    /// position here.
    pub notifications: Vec<Notification>,
    /// One lap: notification numbers in playing order.
    pub plays: Vec<u32>,
}

impl Plan {
    /// Plans `campaigns` × `messages` messages in `order`, shuffled by
    /// `seed`.
    pub fn new(
        channel: Channel,
        campaigns: usize,
        messages: usize,
        order: Order,
        per_request: usize,
        seed: u64,
    ) -> Plan {
        let notifications = in_order(channel, campaigns, messages);
        let mut rng = StdRng::seed_from_u64(seed);
        let count = u32::try_from(notifications.len()).expect("at most 2^32 notifications");
        let plays = match order {
            Order::InOrder => (0..count).collect(),
            Order::Shuffled => shuffle_within_messages(&notifications, messages, &mut rng),
            Order::Duplicated => duplicate_later(count, &mut rng),
        };
        Plan {
            channel,
            campaigns,
            messages,
            per_request,
            notifications,
            plays,
        }
    }

    /// Global number of the message a notification is about.
    pub fn message_of(&self, notification: &Notification) -> usize {
        notification.campaign as usize * self.messages + notification.index as usize
    }

    /// Statuses the run may send: a lap times `laps` (`None` when 0:
    /// unbounded, the clock ends the run).
    pub fn total_plays(&self, laps: usize) -> Option<usize> {
        (laps > 0).then(|| self.plays.len() * laps)
    }

    /// Requests needed for `total_plays(laps)` (`None`: unbounded).
    pub fn total_requests(&self, laps: usize) -> Option<usize> {
        self.total_plays(laps)
            .map(|plays| plays.div_ceil(self.per_request))
    }

    /// The notification numbers request `request` carries: plays
    /// `request × per_request` onwards, laps following each other, at most
    /// `total_plays(laps)`.
    pub fn request(&self, request: usize, laps: usize) -> Vec<u32> {
        let first = request * self.per_request;
        let end = first + self.per_request;
        let end = self.total_plays(laps).map_or(end, |total| end.min(total));
        (first..end)
            .map(|play| self.plays[play % self.plays.len()])
            .collect()
    }

    /// Each campaign's counters once the hub has recorded every
    /// notification `acknowledged` holds, in campaign order.
    pub fn expected_counters(&self, acknowledged: impl Fn(usize) -> bool) -> Vec<Counters> {
        let mut seen = vec![0u8; self.campaigns * self.messages];
        for (number, notification) in self.notifications.iter().enumerate() {
            if acknowledged(number) {
                seen[self.message_of(notification)] |= notification.stage.closure();
            }
        }
        seen.chunks(self.messages)
            .map(|messages| {
                let mut counters = Counters::default();
                for &mask in messages {
                    counters.add(mask);
                }
                counters
            })
            .collect()
    }
}

/// Every notification once, stage by stage, campaigns interleaved (see the
/// module documentation).
fn in_order(channel: Channel, campaigns: usize, messages: usize) -> Vec<Notification> {
    let longest = (0..messages.min(20))
        .map(|index| lifecycle(channel, index).len())
        .max()
        .unwrap_or(0);
    let mut list = Vec::new();
    for position in 0..longest {
        for index in 0..messages {
            let Some(&stage) = lifecycle(channel, index).get(position) else {
                continue;
            };
            for campaign in 0..campaigns {
                list.push(Notification {
                    campaign: campaign as u32,
                    index: index as u32,
                    stage,
                });
            }
        }
    }
    list
}

/// Deals each message's notifications into the slots the in-order list
/// gives that message, in a random order.
fn shuffle_within_messages(
    notifications: &[Notification],
    messages: usize,
    rng: &mut StdRng,
) -> Vec<u32> {
    let message = |number: u32| {
        let n = notifications[number as usize];
        n.campaign as usize * messages + n.index as usize
    };
    // Positions grouped by message, each group in list order (stable sort).
    let mut slots: Vec<u32> = (0..notifications.len() as u32).collect();
    slots.sort_by_key(|&number| message(number));
    let mut plays: Vec<u32> = (0..notifications.len() as u32).collect();
    for group in slots.chunk_by(|&a, &b| message(a) == message(b)) {
        let mut dealt = group.to_vec();
        dealt.shuffle(rng);
        for (&slot, number) in group.iter().zip(dealt) {
            plays[slot as usize] = number;
        }
    }
    plays
}

/// Plays `0..count` in order, each a second time at a uniformly random
/// point after its first.
fn duplicate_later(count: u32, rng: &mut StdRng) -> Vec<u32> {
    /// Room between two consecutive first plays for the copies put there.
    const SPREAD: u64 = 1 << 20;
    let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(count as usize * 2);
    for number in 0..count {
        let first = u64::from(number) * SPREAD;
        keyed.push((first, number));
        let again = rng.gen_range(first + 1..=u64::from(count) * SPREAD);
        keyed.push((again, number));
    }
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, number)| number).collect()
}

/// A campaign's counters, as `GET …/metrics` reports them (its version and
/// time left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub total: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
    pub clicked: u64,
    pub complained: u64,
    pub by_status: ByStatus,
}

/// Messages by current status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByStatus {
    pub pending: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
}

impl Counters {
    /// Counts one message whose seen set is `mask`.
    fn add(&mut self, mask: u8) {
        let has = |bit: u8| u64::from(mask & bit != 0);
        self.total += 1;
        self.sent += has(SENT);
        self.delivered += has(DELIVERED);
        self.read += has(READ);
        self.clicked += has(CLICKED);
        self.complained += has(COMPLAINED);
        let by = &mut self.by_status;
        if mask & READ != 0 {
            by.read += 1;
        } else if mask & DELIVERED != 0 {
            by.delivered += 1;
        } else if mask & FAILED != 0 {
            by.failed += 1;
            self.failed += 1;
        } else if mask & SENT != 0 {
            by.sent += 1;
        } else {
            by.pending += 1;
        }
    }
}

/// Campaign `campaign`'s id in run `run`.
pub fn campaign_id(run: &str, campaign: usize) -> String {
    format!("load-{run}-{campaign}")
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn plan(channel: Channel, campaigns: usize, messages: usize, order: Order) -> Plan {
        Plan::new(channel, campaigns, messages, order, 1, 7)
    }

    fn stages(channel: Channel, messages: usize) -> usize {
        (0..messages).map(|i| lifecycle(channel, i).len()).sum()
    }

    /// Each message's notifications in the order the plays send them.
    fn per_message(plan: &Plan) -> HashMap<usize, Vec<Stage>> {
        let mut seen: HashMap<usize, Vec<Stage>> = HashMap::new();
        for &number in &plan.plays {
            let n = plan.notifications[number as usize];
            seen.entry(plan.message_of(&n)).or_default().push(n.stage);
        }
        seen
    }

    #[test]
    fn in_order_sends_every_status_once_stage_by_stage_campaigns_interleaved() {
        for channel in [Channel::Whatsapp, Channel::Ses] {
            let plan = plan(channel, 3, 40, Order::InOrder);
            assert_eq!(plan.notifications.len(), 3 * stages(channel, 40));
            assert_eq!(plan.plays.len(), plan.notifications.len());
            // The first stage of every message first, campaigns interleaved.
            let first: Vec<(u32, u32)> = plan.notifications[..6]
                .iter()
                .map(|n| (n.campaign, n.index))
                .collect();
            assert_eq!(first, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
            assert!(
                plan.notifications[..120]
                    .iter()
                    .all(|n| n.stage == Stage::Sent)
            );
            for (message, sent) in per_message(&plan) {
                assert_eq!(sent, lifecycle(channel, message % 40), "{message}");
            }
        }
    }

    #[test]
    fn shuffled_sends_each_message_its_statuses_once_in_some_other_orders() {
        let plan = plan(Channel::Whatsapp, 2, 200, Order::Shuffled);
        let mut sorted = plan.plays.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..plan.notifications.len() as u32).collect::<Vec<_>>()
        );
        let mut read_first = 0;
        for (message, sent) in per_message(&plan) {
            let life = lifecycle(Channel::Whatsapp, message % 200);
            let mut as_set = sent.clone();
            as_set.sort_by_key(|stage| stage.index());
            let mut expected = life.to_vec();
            expected.sort_by_key(|stage| stage.index());
            assert_eq!(as_set, expected, "{message}");
            read_first += usize::from(sent.first() == Some(&Stage::Read));
        }
        // 280 messages are read; about a third of them get read first.
        assert!((40..=160).contains(&read_first), "{read_first}");
        // Same seed, same plan; another seed, another.
        assert_eq!(
            plan.plays,
            Plan::new(Channel::Whatsapp, 2, 200, Order::Shuffled, 1, 7).plays
        );
        assert_ne!(
            plan.plays,
            Plan::new(Channel::Whatsapp, 2, 200, Order::Shuffled, 1, 8).plays
        );
    }

    #[test]
    fn duplicated_sends_every_status_twice_the_second_later() {
        let plan = plan(Channel::Ses, 2, 50, Order::Duplicated);
        let count = plan.notifications.len();
        assert_eq!(plan.plays.len(), 2 * count);
        let mut first_at = HashMap::new();
        let mut gaps = Vec::new();
        for (at, &number) in plan.plays.iter().enumerate() {
            match first_at.insert(number, at) {
                None => {}
                Some(first) => gaps.push(at - first),
            }
        }
        assert_eq!(first_at.len(), count);
        assert_eq!(gaps.len(), count);
        // First copies come in order.
        let mut firsts: Vec<u32> = Vec::new();
        let mut seen = HashSet::new();
        for &number in &plan.plays {
            if seen.insert(number) {
                firsts.push(number);
            }
        }
        assert_eq!(firsts, (0..count as u32).collect::<Vec<_>>());
        // Second copies are spread, not all adjacent.
        assert!(gaps.iter().filter(|&&gap| gap > 10).count() > count / 2);
    }

    #[test]
    fn requests_carry_consecutive_plays_and_laps_follow_each_other() {
        let mut plan = plan(Channel::Whatsapp, 1, 10, Order::InOrder);
        plan.per_request = 4;
        let plays = plan.plays.len();
        assert_eq!(plays, stages(Channel::Whatsapp, 10));
        assert_eq!(plan.total_requests(1), Some(plays.div_ceil(4)));
        assert_eq!(plan.total_requests(0), None);
        assert_eq!(plan.request(0, 1), [0, 1, 2, 3]);
        let last = plays.div_ceil(4) - 1;
        assert_eq!(plan.request(last, 1).len(), plays - 4 * last);
        // Laps: a request may span two of them; unbounded keeps going.
        let spanning = plan.request(last, 2);
        assert_eq!(spanning.len(), 4);
        assert_eq!(spanning.last(), Some(&((4 * last + 3 - plays) as u32)));
        assert_eq!(plan.request(1_000, 0).len(), 4);
    }

    /// Expected counters by the specification's rules, for hand-made seen
    /// sets: funnel counts stages reached, `failed` and `by_status` count
    /// current statuses.
    #[test]
    fn counters_follow_the_status_rules() {
        let mut counters = Counters::default();
        for mask in [
            Stage::Read.closure(),
            Stage::Read.closure() | Stage::Failed.closure(),
            Stage::Clicked.closure(),
            Stage::Complained.closure(),
            Stage::Sent.closure() | Stage::Failed.closure(),
            Stage::Failed.closure(),
            Stage::Sent.closure(),
            0,
        ] {
            counters.add(mask);
        }
        let expected = Counters {
            total: 8,
            sent: 6,
            delivered: 4,
            read: 3,
            failed: 2,
            clicked: 1,
            complained: 1,
            by_status: ByStatus {
                pending: 1,
                sent: 1,
                delivered: 1,
                read: 3,
                failed: 2,
            },
        };
        assert_eq!(counters, expected);
    }

    /// Whatever the order, once everything is acknowledged a campaign's
    /// final counters are those of the lifecycles' last stages; with part
    /// acknowledged, only that part counts.
    #[test]
    fn expected_counters_are_the_furthest_stage_acknowledged() {
        for order in [Order::InOrder, Order::Shuffled, Order::Duplicated] {
            let plan = plan(Channel::Whatsapp, 2, 20, order);
            let all = plan.expected_counters(|_| true);
            assert_eq!(all.len(), 2);
            for counters in &all {
                assert_eq!(counters.total, 20);
                assert_eq!(counters.sent, 20);
                assert_eq!(counters.delivered, 18);
                assert_eq!(counters.read, 14);
                assert_eq!(counters.failed, 1);
                assert_eq!(counters.by_status.delivered, 4);
                assert_eq!(counters.by_status.sent, 1);
            }
        }
        let ses = plan(Channel::Ses, 1, 20, Order::Shuffled).expected_counters(|_| true);
        assert_eq!(
            (
                ses[0].read,
                ses[0].clicked,
                ses[0].complained,
                ses[0].failed
            ),
            (14, 6, 1, 1)
        );
        assert_eq!(ses[0].by_status.delivered, 4);

        let plan = plan(Channel::Whatsapp, 2, 20, Order::InOrder);
        // Only campaign 1's read of message 0: it is read (hence delivered
        // and sent); campaign 0 has nothing yet.
        let read = plan
            .notifications
            .iter()
            .position(|n| (n.campaign, n.index, n.stage) == (1, 0, Stage::Read))
            .unwrap();
        let partial = plan.expected_counters(|number| number == read);
        assert_eq!(partial[0].by_status.pending, 20);
        assert_eq!(
            (partial[1].sent, partial[1].delivered, partial[1].read),
            (1, 1, 1)
        );
        assert_eq!(partial[1].by_status.pending, 19);
    }

    #[test]
    fn event_names_are_the_providers() {
        for channel in [Channel::Whatsapp, Channel::Ses] {
            for stage in Stage::ALL {
                assert_eq!(
                    Stage::from_event(channel, stage.event(channel)),
                    Some(stage)
                );
            }
        }
        assert_eq!(Stage::Failed.event(Channel::Ses), "Bounce");
        assert_eq!(Stage::from_event(Channel::Ses, "read"), None);
    }
}
