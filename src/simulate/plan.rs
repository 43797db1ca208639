//! The plan of a run: each message's provider lifecycle (WhatsApp statuses,
//! SES events), misordered and redelivered the way providers do it, spread
//! over the run at the chosen rate, and the feeds interleaved.

use rand::Rng as _;
use rand::rngs::StdRng;

/// One campaign being played.
#[derive(Debug)]
pub(super) struct Track {
    /// Which provider's feed it is.
    pub(super) feed: Feed,
    /// The campaign's id on the hub.
    pub(super) campaign: String,
    /// Provider message ids, by message index.
    pub(super) ids: Vec<String>,
    /// When each message was sent, unix milliseconds (the SES `mail.timestamp`).
    pub(super) sent_ms: Vec<i64>,
}

/// Most statuses in one WhatsApp webhook call (Meta batches some).
const MAX_PER_CALL: usize = 50;
/// Share of notifications delivered a second time.
const REDELIVERY: f64 = 0.05;
/// Share of read (opened) messages whose read (`Open`) arrives before their
/// delivery.
const READ_FIRST: f64 = 0.12;

/// A provider feed simulate plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Feed {
    /// Meta's WhatsApp status webhooks.
    WhatsApp,
    /// SES events through SNS.
    Email,
}

impl Feed {
    /// The registration channel and the name in campaign ids.
    pub(super) fn channel(self) -> &'static str {
        match self {
            Feed::WhatsApp => "whatsapp",
            Feed::Email => "email",
        }
    }

    /// What a read that arrives before its delivery is called, for the log.
    pub(super) fn read_first_label(self) -> &'static str {
        match self {
            Feed::WhatsApp => "read before delivered",
            Feed::Email => "Open before Delivery",
        }
    }

    /// Returns the recipient of message `index`, as registered and as the
    /// provider reports it.
    pub(super) fn recipient(self, index: usize) -> String {
        match self {
            Feed::WhatsApp => format!("1555{index:07}"),
            Feed::Email => format!("demo+{index:06}@example.com"),
        }
    }
}

/// One status notification to play.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Play {
    pub(super) feed: Feed,
    /// Index of the message in its campaign.
    pub(super) message: usize,
    /// WhatsApp status (`sent`, …) or SES event type (`Send`, …).
    pub(super) status: &'static str,
    /// Provider time, unix milliseconds.
    pub(super) timestamp_ms: i64,
    /// A second delivery of a notification already played.
    pub(super) redelivery: bool,
}

/// The statuses of one feed to play, in sending order, and what makes them
/// interesting.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) plays: Vec<Play>,
    pub(super) read_first: usize,
    pub(super) redeliveries: usize,
    /// When each message was sent, unix milliseconds.
    pub(super) sent_ms: Vec<i64>,
}

/// Splits due statuses into webhook calls: WhatsApp statuses in order, at
/// most MAX_PER_CALL a call; one SES event per SNS notification.
pub(super) fn calls(due: &[Play]) -> Vec<Vec<Play>> {
    let (whatsapp, email): (Vec<&Play>, Vec<&Play>) =
        due.iter().partition(|play| play.feed == Feed::WhatsApp);
    whatsapp
        .chunks(MAX_PER_CALL)
        .map(|chunk| chunk.iter().map(|&play| play.clone()).collect())
        .chain(email.into_iter().map(|play| vec![play.clone()]))
        .collect()
}

/// (arrival, provider time, message, status), times in "run units" (0..~1.5).
type Event = (f64, f64, usize, &'static str);

/// Returns when a notification about something at `at` arrives.
fn arrive(at: f64, rng: &mut StdRng) -> f64 {
    at + rng.gen_range(0.0..0.02)
}

/// Pushes the statuses of one WhatsApp message sent at `sent`: most are
/// read, some only delivered, a few stay sent or fail. Returns whether its
/// `read` arrives before its `delivered`.
fn whatsapp_lifecycle(
    message: usize,
    sent: f64,
    rng: &mut StdRng,
    events: &mut Vec<Event>,
) -> bool {
    let fate: f64 = rng.gen_range(0.0..1.0);
    if fate < 0.04 {
        // Failed; half of them were first reported sent.
        let failed = sent + rng.gen_range(0.02..0.2);
        if rng.gen_bool(0.5) {
            events.push((arrive(sent, rng), sent, message, "sent"));
        }
        events.push((arrive(failed, rng), failed, message, "failed"));
        return false;
    }
    events.push((arrive(sent, rng), sent, message, "sent"));
    if fate < 0.07 {
        return false; // never delivered (phone off)
    }
    let delivered = sent + rng.gen_range(0.02..0.3);
    let delivered_arrival = arrive(delivered, rng);
    events.push((delivered_arrival, delivered, message, "delivered"));
    if fate < 0.25 {
        return false; // delivered, never read
    }
    let read = delivered + rng.gen_range(0.05..0.6);
    let first = rng.gen_bool(READ_FIRST);
    let read_arrival = if first {
        delivered_arrival - 0.001
    } else {
        arrive(read, rng)
    };
    events.push((read_arrival, read, message, "read"));
    first
}

/// Pushes the SES events of one email sent at `sent`: most go Send →
/// Delivery → Open, some are then clicked, a few bounce (instead of being
/// delivered) or draw a complaint, a few never get past Send. Returns
/// whether its `Open` arrives before its `Delivery`.
fn email_lifecycle(message: usize, sent: f64, rng: &mut StdRng, events: &mut Vec<Event>) -> bool {
    let fate: f64 = rng.gen_range(0.0..1.0);
    events.push((arrive(sent, rng), sent, message, "Send"));
    if fate < 0.03 {
        let bounced = sent + rng.gen_range(0.02..0.2);
        events.push((arrive(bounced, rng), bounced, message, "Bounce"));
        return false;
    }
    if fate < 0.05 {
        return false; // still deferred by the receiving server
    }
    let delivered = sent + rng.gen_range(0.02..0.3);
    let delivered_arrival = arrive(delivered, rng);
    events.push((delivered_arrival, delivered, message, "Delivery"));
    if fate < 0.30 {
        return false; // delivered, never opened
    }
    let opened = delivered + rng.gen_range(0.05..0.6);
    let first = rng.gen_bool(READ_FIRST);
    let open_arrival = if first {
        delivered_arrival - 0.001
    } else {
        arrive(opened, rng)
    };
    events.push((open_arrival, opened, message, "Open"));
    if fate < 0.33 {
        let complained = opened + rng.gen_range(0.05..0.3);
        events.push((arrive(complained, rng), complained, message, "Complaint"));
    } else if fate >= 0.72 {
        let clicked = opened + rng.gen_range(0.01..0.2);
        events.push((arrive(clicked, rng), clicked, message, "Click"));
    }
    first
}

/// Plans the statuses of `messages` messages of `feed` played at `rate` per
/// second from unix time `start_ms`.
///
/// Each status gets a provider time (when it happened) and an arrival time
/// (when its webhook comes); the plan is sorted by arrival, and a timestamp
/// is the provider time spread over the run. Reads that arrive first keep
/// their later provider time, as the providers' do.
pub(super) fn plan(
    feed: Feed,
    messages: usize,
    rate: f64,
    start_ms: i64,
    rng: &mut StdRng,
) -> Plan {
    let mut events: Vec<Event> = Vec::new();
    let mut sent_at = Vec::with_capacity(messages);
    let mut read_first = 0;
    for message in 0..messages {
        let sent = message as f64 / messages.max(1) as f64 * 0.4 + rng.gen_range(0.0..0.05);
        sent_at.push(sent);
        let early = match feed {
            Feed::WhatsApp => whatsapp_lifecycle(message, sent, rng, &mut events),
            Feed::Email => email_lifecycle(message, sent, rng, &mut events),
        };
        read_first += usize::from(early);
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Timestamps: provider times mapped onto the run's expected duration.
    let duration_ms = events.len() as f64 / rate * 1_000.0;
    let last = events.iter().map(|event| event.1).fold(0.0_f64, f64::max);
    let scale = if last > 0.0 { duration_ms / last } else { 0.0 };
    let stamp = |at: f64| start_ms + (at * scale).round() as i64;
    let mut keyed: Vec<(f64, Play)> = Vec::with_capacity(events.len() + events.len() / 16);
    let mut redeliveries = 0;
    for (position, (_, at, message, status)) in events.into_iter().enumerate() {
        let play = Play {
            feed,
            message,
            status,
            timestamp_ms: stamp(at),
            redelivery: false,
        };
        if rng.gen_bool(REDELIVERY) {
            // Redelivered a little later, between two other notifications.
            let later = position as f64 + rng.gen_range(1..=20) as f64 + 0.5;
            keyed.push((
                later,
                Play {
                    redelivery: true,
                    ..play.clone()
                },
            ));
            redeliveries += 1;
        }
        keyed.push((position as f64, play));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    Plan {
        plays: keyed.into_iter().map(|(_, play)| play).collect(),
        read_first,
        redeliveries,
        sent_ms: sent_at.into_iter().map(stamp).collect(),
    }
}

/// Spreads a plan's timestamps `factor` times further from `start_ms` (a
/// feed that shares the rate with another takes longer).
pub(super) fn stretch(plan: &mut Plan, start_ms: i64, factor: f64) {
    let spread = |ms: i64| start_ms + ((ms - start_ms) as f64 * factor).round() as i64;
    for play in &mut plan.plays {
        play.timestamp_ms = spread(play.timestamp_ms);
    }
    for sent in &mut plan.sent_ms {
        *sent = spread(*sent);
    }
}

/// Merges feeds into one sequence, each spread evenly over it and kept in
/// its own order.
pub(super) fn interleave(feeds: Vec<Vec<Play>>) -> Vec<Play> {
    let mut keyed: Vec<(f64, Play)> = feeds
        .into_iter()
        .flat_map(|plays| {
            let len = plays.len() as f64;
            plays
                .into_iter()
                .enumerate()
                .map(move |(index, play)| ((index as f64 + 0.5) / len, play))
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, play)| play).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::SeedableRng as _;

    use super::*;

    const START_MS: i64 = 1_700_000_000_000;

    #[test]
    fn plan_is_bounded_realistic_and_misordered() {
        let mut rng = StdRng::seed_from_u64(42);
        let plan = plan(Feed::WhatsApp, 1_000, 50.0, START_MS, &mut rng);
        let originals = plan.plays.iter().filter(|play| !play.redelivery).count();
        assert_eq!(plan.plays.len(), originals + plan.redeliveries);
        assert!(originals <= 3 * 1_000);
        // About 5% redelivered, about 12% of reads first.
        let expected = originals as f64 * REDELIVERY;
        let redeliveries = plan.redeliveries as f64;
        assert!(
            redeliveries > expected * 0.6 && redeliveries < expected * 1.4,
            "{redeliveries} redeliveries of {originals}"
        );
        assert!(plan.read_first > 20, "{}", plan.read_first);
        assert_eq!(plan.sent_ms.len(), 1_000);

        let mut statuses: HashMap<usize, Vec<&str>> = HashMap::new();
        for play in plan.plays.iter().filter(|play| !play.redelivery) {
            assert_eq!(play.feed, Feed::WhatsApp);
            statuses.entry(play.message).or_default().push(play.status);
        }
        assert_eq!(statuses.len(), 1_000, "every message gets a status");
        let read = statuses.values().filter(|s| s.contains(&"read")).count();
        let failed = statuses.values().filter(|s| s.contains(&"failed")).count();
        let unread = statuses
            .values()
            .filter(|s| s.contains(&"delivered") && !s.contains(&"read"))
            .count();
        assert!(read > 650 && read < 850, "{read}");
        assert!(failed > 10 && failed < 80, "{failed}");
        assert!(unread > 100, "{unread}");
        // Each notification of a message is distinct; redeliveries repeat one.
        for play in plan.plays.iter().filter(|play| play.redelivery) {
            assert!(statuses[&play.message].contains(&play.status));
        }
        let distinct: HashSet<(usize, &str)> = plan
            .plays
            .iter()
            .filter(|play| !play.redelivery)
            .map(|play| (play.message, play.status))
            .collect();
        assert_eq!(distinct.len(), originals);
    }

    /// Counts the `early` notifications played before their message's `late` one.
    fn early_arrivals(plays: &[Play], late: &str, early: &str) -> usize {
        let mut seen_late = HashSet::new();
        let mut count = 0;
        for play in plays {
            if play.status == late {
                seen_late.insert(play.message);
            } else if play.status == early && !play.redelivery && !seen_late.contains(&play.message)
            {
                count += 1;
            }
        }
        count
    }

    #[test]
    fn read_first_keeps_the_later_timestamp() {
        for (feed, delivered, read) in [
            (Feed::WhatsApp, "delivered", "read"),
            (Feed::Email, "Delivery", "Open"),
        ] {
            let mut rng = StdRng::seed_from_u64(7);
            let plan = plan(feed, 500, 100.0, START_MS, &mut rng);
            let early_reads = early_arrivals(&plan.plays, delivered, read);
            assert!(
                plan.read_first > 0 && early_reads >= plan.read_first,
                "{feed:?}"
            );
            let stamp = |status: &str| -> HashMap<usize, i64> {
                plan.plays
                    .iter()
                    .filter(|play| play.status == status)
                    .map(|play| (play.message, play.timestamp_ms))
                    .collect()
            };
            let (delivered_at, read_at) = (stamp(delivered), stamp(read));
            for (message, read) in read_at {
                assert!(
                    read >= delivered_at[&message],
                    "read stamped after delivered"
                );
            }
        }
    }

    #[test]
    fn email_plan_has_every_ses_lifecycle() {
        let mut rng = StdRng::seed_from_u64(42);
        let plan = plan(Feed::Email, 1_000, 50.0, START_MS, &mut rng);
        let mut events: HashMap<usize, Vec<&str>> = HashMap::new();
        for play in plan.plays.iter().filter(|play| !play.redelivery) {
            assert_eq!(play.feed, Feed::Email);
            events.entry(play.message).or_default().push(play.status);
        }
        assert_eq!(events.len(), 1_000);
        let with = |name: &str| events.values().filter(|e| e.contains(&name)).count();
        assert_eq!(with("Send"), 1_000, "every email is sent");
        assert!(
            (850..=1_000).contains(&with("Delivery")),
            "{}",
            with("Delivery")
        );
        assert!((600..=800).contains(&with("Open")), "{}", with("Open"));
        assert!((200..=350).contains(&with("Click")), "{}", with("Click"));
        assert!((10..=60).contains(&with("Bounce")), "{}", with("Bounce"));
        assert!(
            (10..=60).contains(&with("Complaint")),
            "{}",
            with("Complaint")
        );
        for lifecycle in events.values() {
            assert!(!(lifecycle.contains(&"Bounce") && lifecycle.contains(&"Delivery")));
            assert!(!lifecycle.contains(&"Click") || lifecycle.contains(&"Open"));
        }
        let expected = (plan.plays.len() - plan.redeliveries) as f64 * REDELIVERY;
        let redeliveries = plan.redeliveries as f64;
        assert!(redeliveries > expected * 0.6 && redeliveries < expected * 1.4);
        assert!(plan.read_first > 30, "{}", plan.read_first);
        // A Send is stamped when the email was sent (its `mail.timestamp`).
        for play in plan.plays.iter().filter(|play| play.status == "Send") {
            assert_eq!(play.timestamp_ms, plan.sent_ms[play.message]);
        }
    }

    #[test]
    fn feeds_interleave_in_their_own_order_and_stretch_over_the_run() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut whatsapp = plan(Feed::WhatsApp, 50, 10.0, START_MS, &mut rng);
        let email = plan(Feed::Email, 100, 10.0, START_MS, &mut rng);
        let last = |plan: &Plan| plan.plays.iter().map(|p| p.timestamp_ms).max().unwrap();
        let before = last(&whatsapp);
        stretch(&mut whatsapp, START_MS, 2.0);
        assert!((last(&whatsapp) - START_MS - 2 * (before - START_MS)).abs() <= 1);
        let (wa, mail) = (whatsapp.plays.clone(), email.plays.clone());
        let merged = interleave(vec![whatsapp.plays, email.plays]);
        assert_eq!(merged.len(), wa.len() + mail.len());
        let only = |feed: Feed| -> Vec<Play> {
            merged.iter().filter(|p| p.feed == feed).cloned().collect()
        };
        assert_eq!(only(Feed::WhatsApp), wa);
        assert_eq!(only(Feed::Email), mail);
        // Spread evenly: the first half of the run holds about half of each.
        let half = &merged[..merged.len() / 2];
        let wa_half = half.iter().filter(|p| p.feed == Feed::WhatsApp).count();
        assert!(
            wa_half.abs_diff(wa.len() / 2) <= 1,
            "{wa_half} of {}",
            wa.len()
        );
    }

    #[test]
    fn due_statuses_make_batched_whatsapp_calls_and_one_call_per_ses_event() {
        let play = |feed, message| Play {
            feed,
            message,
            status: "sent",
            timestamp_ms: START_MS,
            redelivery: false,
        };
        let due: Vec<Play> = (0..120)
            .map(|message| {
                let feed = if message % 4 == 0 {
                    Feed::Email
                } else {
                    Feed::WhatsApp
                };
                play(feed, message)
            })
            .collect();
        let calls = calls(&due);
        let sizes: Vec<(Feed, usize)> = calls
            .iter()
            .map(|call| (call[0].feed, call.len()))
            .collect();
        let mut expected = vec![(Feed::WhatsApp, 50), (Feed::WhatsApp, 40)];
        expected.extend([(Feed::Email, 1); 30]);
        assert_eq!(sizes, expected);
        let whatsapp: Vec<usize> = calls
            .iter()
            .flatten()
            .filter(|play| play.feed == Feed::WhatsApp)
            .map(|play| play.message)
            .collect();
        assert!(whatsapp.is_sorted(), "whatsapp statuses keep their order");
    }
}
