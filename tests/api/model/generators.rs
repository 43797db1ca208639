//! Histories: what proptest generates.

use proptest::prelude::*;

use super::reference::{SES, WHATSAPP};

/// One notification of a message, before it is dressed for the wire.
#[derive(Clone, Debug)]
pub(super) struct EventSpec {
    /// Index into [`WHATSAPP`] or [`SES`].
    pub(super) kind: usize,
    /// Provider time after the start: seconds (WhatsApp) or ms (SES).
    pub(super) offset: i64,
    /// Extra deliveries of the same notification.
    pub(super) redeliveries: usize,
    /// SES: typed by `notificationType` (identity notifications) rather
    /// than `eventType` (configuration sets).
    pub(super) identity_form: bool,
}

#[derive(Clone, Debug)]
pub(super) struct MessageSpec {
    pub(super) email: bool,
    /// 0 or 1.
    pub(super) campaign: usize,
    /// 0: never registered (its statuses stay buffered); 1; 2: registered
    /// again later (idempotent).
    pub(super) registrations: usize,
    pub(super) events: Vec<EventSpec>,
}

/// One step of a history, in posting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Item {
    /// A delivery of event `event` of message `message` (the first or a
    /// redelivery: they are the same).
    Notify { message: usize, event: usize },
    /// A registration of `message`.
    Register { message: usize },
}

#[derive(Clone, Debug)]
pub(super) struct History {
    pub(super) messages: Vec<MessageSpec>,
    pub(super) order: Vec<Item>,
    /// Sizes of the calls that consecutive WhatsApp statuses (or
    /// registrations of one campaign) are grouped into, used in turn.
    pub(super) groups: Vec<usize>,
    pub(super) concurrent: bool,
}

fn registrations() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 3 => Just(1usize), 1 => Just(2usize)]
}

fn whatsapp_message() -> impl Strategy<Value = MessageSpec> {
    (
        0..2usize,
        registrations(),
        // One notification per status value: Meta keys them by id + status.
        prop::collection::btree_map(0..WHATSAPP.len(), (0i64..600, 0..3usize), 0..=4),
    )
        .prop_map(|(campaign, registrations, values)| MessageSpec {
            email: false,
            campaign,
            registrations,
            events: values
                .into_iter()
                .map(|(kind, (offset, redeliveries))| EventSpec {
                    kind,
                    offset,
                    redeliveries,
                    identity_form: false,
                })
                .collect(),
        })
}

fn email_message() -> impl Strategy<Value = MessageSpec> {
    (
        0..2usize,
        registrations(),
        // Any events, the same type more than once: each has its own MessageId.
        prop::collection::vec(
            (0..SES.len(), 0i64..600_000, 0..3usize, any::<bool>()),
            0..=5,
        ),
    )
        .prop_map(|(campaign, registrations, events)| {
            let mut rejected = false;
            let events = events
                .into_iter()
                .map(|(kind, offset, redeliveries, identity_form)| EventSpec {
                    kind,
                    offset,
                    redeliveries,
                    identity_form,
                })
                // SES rejects or fails to render a message once, if at all,
                // and instead of sending it.
                .filter(|event| {
                    let once = matches!(SES[event.kind].0, "Reject" | "Rendering Failure");
                    !(once && std::mem::replace(&mut rejected, true))
                })
                .collect();
            MessageSpec {
                email: true,
                campaign,
                registrations,
                events,
            }
        })
}

pub(super) fn history() -> impl Strategy<Value = History> {
    (
        prop::collection::vec(prop_oneof![whatsapp_message(), email_message()], 1..=6),
        prop::collection::vec(1..=3usize, 16),
        any::<bool>(),
    )
        .prop_flat_map(|(messages, groups, concurrent)| {
            let mut items = Vec::new();
            for (message, spec) in messages.iter().enumerate() {
                for (event, each) in spec.events.iter().enumerate() {
                    for _ in 0..=each.redeliveries {
                        items.push(Item::Notify { message, event });
                    }
                }
                for _ in 0..spec.registrations {
                    items.push(Item::Register { message });
                }
            }
            (
                Just(messages),
                Just(items).prop_shuffle(),
                Just(groups),
                Just(concurrent),
            )
        })
        .prop_map(|(messages, order, groups, concurrent)| History {
            messages,
            order,
            groups,
            concurrent,
        })
}
