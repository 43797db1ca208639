//! The reference model: SPEC.md's "Status semantics", in its own encoding.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::wire::Notice;

pub(super) const SENT: u8 = 1;
pub(super) const DELIVERED: u8 = 2;
pub(super) const READ: u8 = 4;
pub(super) const CLICKED: u8 = 8;
pub(super) const COMPLAINED: u8 = 16;
pub(super) const FAILED: u8 = 32;
pub(super) const STATUSES: [(u8, &str); 6] = [
    (SENT, "sent"),
    (DELIVERED, "delivered"),
    (READ, "read"),
    (CLICKED, "clicked"),
    (COMPLAINED, "complained"),
    (FAILED, "failed"),
];

/// A status with everything it implies: clicked ⇒ read ⇒ delivered ⇒
/// sent, complained ⇒ delivered.
fn with_implied(status: u8) -> u8 {
    match status {
        CLICKED => CLICKED | with_implied(READ),
        READ => READ | with_implied(DELIVERED),
        COMPLAINED => COMPLAINED | with_implied(DELIVERED),
        DELIVERED => DELIVERED | SENT,
        other => other,
    }
}

/// The current status: read if read was seen, else delivered, else failed,
/// else sent, else pending.
pub(super) fn current(seen: u8) -> &'static str {
    [
        (READ, "read"),
        (DELIVERED, "delivered"),
        (FAILED, "failed"),
        (SENT, "sent"),
    ]
    .into_iter()
    .find(|(bit, _)| seen & bit != 0)
    .map_or("pending", |(_, name)| name)
}

fn status_name(status: u8) -> &'static str {
    STATUSES
        .iter()
        .find(|(bit, _)| *bit == status)
        .map(|(_, name)| *name)
        .unwrap()
}

/// WhatsApp status values and what each means; `deleted` is one statushub
/// does not know (kept in the timeline, no status change).
pub(super) const WHATSAPP: [(&str, Option<u8>); 6] = [
    ("sent", Some(SENT)),
    ("delivered", Some(DELIVERED)),
    ("read", Some(READ)),
    ("played", Some(READ)),
    ("failed", Some(FAILED)),
    ("deleted", None),
];

/// SES event types and what each means (SPEC.md's SES mapping).
pub(super) const SES: [(&str, Option<u8>); 10] = [
    ("Send", Some(SENT)),
    ("Delivery", Some(DELIVERED)),
    ("Open", Some(READ)),
    ("Click", Some(CLICKED)),
    ("Bounce", Some(FAILED)),
    ("Complaint", Some(COMPLAINED)),
    ("Reject", Some(FAILED)),
    ("Rendering Failure", Some(FAILED)),
    ("DeliveryDelay", None),
    ("Subscription", None),
];

/// SES events whose object carries no timestamp of its own: they are dated
/// by `mail.timestamp`.
pub(super) const DATED_BY_MAIL: [&str; 3] = ["Send", "Reject", "Rendering Failure"];

/// 2024-05-01T12:00:00Z, the start of every history.
pub(super) const BASE_SECS: i64 = 1_714_564_800;

/// The failure a message keeps: the failure with the earliest provider
/// timestamp (the generator never ties two of one message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeptFailure {
    pub(super) ts_ms: i64,
    pub(super) title: String,
    /// Parts the failure code must contain (WhatsApp's code; SES's bounce
    /// type and sub-type); empty when the spec says nothing of the code.
    pub(super) code_parts: Vec<String>,
}

/// A message as the model sees it.
#[derive(Clone, Debug, Default)]
pub(super) struct ModelMessage {
    pub(super) registered: bool,
    pub(super) seen: u8,
    /// First provider timestamp of each status observed directly.
    pub(super) first: BTreeMap<u8, i64>,
    pub(super) failure: Option<KeptFailure>,
    /// Each distinct notification recorded: (event, status name, ms).
    pub(super) timeline: Vec<(String, Option<&'static str>, i64)>,
    /// Notifications waiting for registration, by arrival number.
    pub(super) buffered: Vec<(usize, usize)>,
}

/// The hub as the model sees it, for one case.
#[derive(Debug, Default)]
pub(super) struct Model {
    pub(super) messages: Vec<ModelMessage>,
    /// Every distinct notification the hub has recorded (applied or buffered).
    pub(super) keys: HashSet<String>,
    /// Per campaign: its version, and whether it exists yet.
    pub(super) versions: [i64; 2],
    pub(super) exists: [bool; 2],
    pub(super) arrivals: usize,
}

impl Model {
    /// Records `notice` for its registered message; returns whether it
    /// changed the message (its seen set or a first timestamp).
    fn apply(&mut self, notice: &Notice) -> bool {
        let message = &mut self.messages[notice.message];
        message.timeline.push((
            notice.event.clone(),
            notice.status.map(status_name),
            notice.ts_ms,
        ));
        let Some(status) = notice.status else {
            return false;
        };
        let seen = message.seen | with_implied(status);
        let first = message.first.get(&status).copied();
        let earlier = first.is_none_or(|first| notice.ts_ms < first);
        let changed = seen != message.seen || earlier;
        message.seen = seen;
        if earlier {
            message.first.insert(status, notice.ts_ms);
        }
        if let Some(failure) = &notice.failure {
            if message
                .failure
                .as_ref()
                .is_none_or(|kept| failure.ts_ms < kept.ts_ms)
            {
                message.failure = Some(failure.clone());
            }
        }
        changed
    }

    /// Delivers one provider call; returns the receipt the hub must give.
    pub(super) fn deliver(&mut self, notices: &[&Notice], campaign_of: &[usize]) -> Value {
        let (mut applied, mut duplicates, mut unmatched) = (0, 0, 0);
        for notice in notices {
            if !self.keys.insert(notice.key.clone()) {
                duplicates += 1;
            } else if self.messages[notice.message].registered {
                applied += 1;
                if self.apply(notice) {
                    self.versions[campaign_of[notice.message]] += 1;
                }
            } else {
                unmatched += 1;
                let arrival = self.arrivals;
                self.arrivals += 1;
                self.messages[notice.message]
                    .buffered
                    .push((arrival, notice.index));
            }
        }
        json!({"received": notices.len(), "applied": applied, "duplicates": duplicates,
               "unmatched": unmatched, "dead_lettered": 0})
    }

    /// Registers `messages` of `campaign`; buffered notifications apply in
    /// arrival order. Returns the receipt the hub must give.
    pub(super) fn register(
        &mut self,
        campaign: usize,
        messages: &[usize],
        notices: &[Notice],
    ) -> Value {
        self.exists[campaign] = true;
        let (mut registered, mut existing) = (0, 0);
        for &message in messages {
            if self.messages[message].registered {
                existing += 1;
            } else {
                self.messages[message].registered = true;
                registered += 1;
            }
        }
        if registered > 0 {
            self.versions[campaign] += 1;
        }
        let mut waiting: Vec<(usize, usize)> = messages
            .iter()
            .flat_map(|&message| std::mem::take(&mut self.messages[message].buffered))
            .collect();
        waiting.sort_unstable();
        for (_, index) in &waiting {
            if self.apply(&notices[*index]) {
                self.versions[campaign] += 1;
            }
        }
        json!({"registered": registered, "existing": existing, "conflicts": [],
               "applied_buffered": waiting.len()})
    }

    /// The counters of `campaign`, as `counts_only` shapes the metrics.
    pub(super) fn counts(&self, campaign: usize, campaign_of: &[usize]) -> Value {
        let members: Vec<&ModelMessage> = self
            .messages
            .iter()
            .zip(campaign_of)
            .filter(|(message, of)| message.registered && **of == campaign)
            .map(|(message, _)| message)
            .collect();
        let funnel = |bit: u8| members.iter().filter(|m| m.seen & bit != 0).count();
        let now = |status: &str| members.iter().filter(|m| current(m.seen) == status).count();
        json!({
            "total": members.len(), "sent": funnel(SENT), "delivered": funnel(DELIVERED),
            "read": funnel(READ), "failed": now("failed"), "clicked": funnel(CLICKED),
            "complained": funnel(COMPLAINED),
            "by_status": {"pending": now("pending"), "sent": now("sent"), "delivered": now("delivered"),
                          "read": now("read"), "failed": now("failed")},
        })
    }
}
