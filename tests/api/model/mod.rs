//! A model-based test of the whole hub. Random histories of WhatsApp
//! statuses and SES events (out of order, redelivered, for messages that are
//! registered late or never), interleaved with registrations, are posted over
//! real HTTP, signed as Meta and SNS sign, to one running hub; then
//! everything the API says (each message's status, seen set, first
//! timestamps, failure and timeline; each campaign's counters and version;
//! the webhook and registration receipts; the live stream's last counters)
//! is compared with a small reference model of the spec, written here from
//! SPEC.md without statushub's `domain` module.
//!
//! A redelivery is the same notification again: the same WhatsApp
//! (id, status, timestamp), or the same signed SNS envelope (same
//! `MessageId`). The same status with another timestamp comes only as
//! another notification: WhatsApp `played` beside `read`, or another SES
//! event (a second open, a second bounce).
//!
//! Every case gets a fresh tenant and two fresh campaigns on the same hub,
//! which keeps running across cases as a production hub would. Half the
//! cases post one call at a time, so the model also predicts every receipt
//! and the exact version; the others post four at a time, racing
//! registrations against webhooks, and then only the final state, the sums
//! of the receipts and the version's bookkeeping are compared.
//!
//! `STATUSHUB_MODEL_CASES=N` runs N cases instead of the default
//! [`DEFAULT_CASES`]; a failure prints the smallest history found.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::*;

/// Cases run by default: small, so the suite stays quick in debug builds.
const DEFAULT_CASES: u32 = 24;
/// The environment variable that asks for more cases.
const CASES_VAR: &str = "STATUSHUB_MODEL_CASES";

// ---------------------------------------------------------------------------
// The reference model: SPEC.md's "Status semantics", in its own encoding.

const SENT: u8 = 1;
const DELIVERED: u8 = 2;
const READ: u8 = 4;
const CLICKED: u8 = 8;
const COMPLAINED: u8 = 16;
const FAILED: u8 = 32;
const STATUSES: [(u8, &str); 6] = [
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
fn current(seen: u8) -> &'static str {
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
const WHATSAPP: [(&str, Option<u8>); 6] = [
    ("sent", Some(SENT)),
    ("delivered", Some(DELIVERED)),
    ("read", Some(READ)),
    ("played", Some(READ)),
    ("failed", Some(FAILED)),
    ("deleted", None),
];

/// SES event types and what each means (SPEC.md's SES mapping).
const SES: [(&str, Option<u8>); 10] = [
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
const DATED_BY_MAIL: [&str; 3] = ["Send", "Reject", "Rendering Failure"];

/// 2024-05-01T12:00:00Z, the start of every history.
const BASE_SECS: i64 = 1_714_564_800;

/// The failure a message keeps: the failure with the earliest provider
/// timestamp (the generator never ties two of one message).
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeptFailure {
    ts_ms: i64,
    title: String,
    /// Parts the failure code must contain (WhatsApp's code; SES's bounce
    /// type and sub-type); empty when the spec says nothing of the code.
    code_parts: Vec<String>,
}

/// A message as the model sees it.
#[derive(Clone, Debug, Default)]
struct ModelMessage {
    registered: bool,
    seen: u8,
    /// First provider timestamp of each status observed directly.
    first: BTreeMap<u8, i64>,
    failure: Option<KeptFailure>,
    /// Each distinct notification recorded: (event, status name, ms).
    timeline: Vec<(String, Option<&'static str>, i64)>,
    /// Notifications waiting for registration, by arrival number.
    buffered: Vec<(usize, usize)>,
}

/// The hub as the model sees it, for one case.
#[derive(Debug, Default)]
struct Model {
    messages: Vec<ModelMessage>,
    /// Every distinct notification the hub has recorded (applied or buffered).
    keys: HashSet<String>,
    /// Per campaign: its version, and whether it exists yet.
    versions: [i64; 2],
    exists: [bool; 2],
    arrivals: usize,
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
    fn deliver(&mut self, notices: &[&Notice], campaign_of: &[usize]) -> Value {
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
    fn register(&mut self, campaign: usize, messages: &[usize], notices: &[Notice]) -> Value {
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
    fn counts(&self, campaign: usize, campaign_of: &[usize]) -> Value {
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

// ---------------------------------------------------------------------------
// Histories: what proptest generates.

/// One notification of a message, before it is dressed for the wire.
#[derive(Clone, Debug)]
struct EventSpec {
    /// Index into [`WHATSAPP`] or [`SES`].
    kind: usize,
    /// Provider time after the start: seconds (WhatsApp) or ms (SES).
    offset: i64,
    /// Extra deliveries of the same notification.
    redeliveries: usize,
    /// SES: typed by `notificationType` (identity notifications) rather
    /// than `eventType` (configuration sets).
    identity_form: bool,
}

#[derive(Clone, Debug)]
struct MessageSpec {
    email: bool,
    /// 0 or 1.
    campaign: usize,
    /// 0: never registered (its statuses stay buffered); 1; 2: registered
    /// again later (idempotent).
    registrations: usize,
    events: Vec<EventSpec>,
}

/// One step of a history, in posting order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    /// A delivery of event `event` of message `message` (the first or a
    /// redelivery: they are the same).
    Notify { message: usize, event: usize },
    /// A registration of `message`.
    Register { message: usize },
}

#[derive(Clone, Debug)]
struct History {
    messages: Vec<MessageSpec>,
    order: Vec<Item>,
    /// Sizes of the calls that consecutive WhatsApp statuses (or
    /// registrations of one campaign) are grouped into, used in turn.
    groups: Vec<usize>,
    concurrent: bool,
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

fn history() -> impl Strategy<Value = History> {
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

// ---------------------------------------------------------------------------
// Dressing a history for the wire.

/// One distinct provider notification, ready to post.
#[derive(Clone, Debug)]
struct Notice {
    /// Its index in the case's notices.
    index: usize,
    message: usize,
    /// What makes two deliveries the same notification.
    key: String,
    /// The provider's name of the event, as the timeline shows it.
    event: String,
    status: Option<u8>,
    ts_ms: i64,
    failure: Option<KeptFailure>,
    wire: Wire,
}

#[derive(Clone, Debug)]
enum Wire {
    /// A status object for a WhatsApp payload.
    WhatsApp(Value),
    /// A signed SNS envelope.
    Sns(Value),
}

/// One HTTP call of a case.
#[derive(Clone, Debug)]
enum Call {
    WhatsApp(Vec<usize>),
    Sns(usize),
    Register {
        campaign: usize,
        messages: Vec<usize>,
    },
}

/// A case: names, notices and calls.
struct Case {
    tenant: String,
    campaigns: [String; 2],
    ids: Vec<String>,
    channels: Vec<&'static str>,
    campaign_of: Vec<usize>,
    notices: Vec<Notice>,
    /// Per message and event: the notice's index.
    notice_of: Vec<Vec<usize>>,
    calls: Vec<Call>,
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

fn parse_ms(text: &str) -> i64 {
    let at = OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|_| panic!("{text:?}"));
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// Returns SES's JSON for event `name` about mail `mail_id`.
fn ses_event(
    name: &str,
    form: &str,
    mail_id: &str,
    mail_ms: i64,
    own_ms: i64,
    title: &str,
) -> Value {
    let at = rfc3339(own_ms);
    let (key, object) = match name {
        "Send" => ("send", json!({})),
        "Delivery" => (
            "delivery",
            json!({"timestamp": at, "recipients": ["to@example.com"], "smtpResponse": "250 ok"}),
        ),
        "Open" => (
            "open",
            json!({"timestamp": at, "userAgent": "Mozilla/5.0", "ipAddress": "192.0.2.1"}),
        ),
        "Click" => (
            "click",
            json!({"timestamp": at, "link": "https://example.com/", "ipAddress": "192.0.2.1"}),
        ),
        "Bounce" => (
            "bounce",
            json!({"timestamp": at, "bounceType": "Transient", "bounceSubType": "MailboxFull",
                   "bouncedRecipients": [{"emailAddress": "to@example.com", "diagnosticCode": title}]}),
        ),
        "Complaint" => (
            "complaint",
            json!({"timestamp": at, "complaintFeedbackType": "abuse",
                   "complainedRecipients": [{"emailAddress": "to@example.com"}]}),
        ),
        "Reject" => ("reject", json!({"reason": title})),
        "Rendering Failure" => (
            "failure",
            json!({"templateName": "T", "errorMessage": title}),
        ),
        "DeliveryDelay" => (
            "deliveryDelay",
            json!({"timestamp": at, "delayType": "MailboxFull"}),
        ),
        "Subscription" => ("subscription", json!({"timestamp": at, "contactList": "L"})),
        other => panic!("no SES event {other}"),
    };
    let mut message = json!({
        form: name,
        "mail": {"timestamp": rfc3339(mail_ms), "messageId": mail_id, "source": "from@example.com",
                 "destination": ["to@example.com"]},
    });
    message[key] = object;
    message
}

/// Names the case's tenant, campaigns and messages (fresh for every case,
/// also while proptest shrinks), dresses every notification for the wire
/// (signing SNS envelopes) and groups the history into calls.
fn dress(history: &History, signer: &SnsSigner) -> Case {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let n = CASES.fetch_add(1, Ordering::Relaxed);
    let tenant = format!("model-{n}");
    let campaigns = [format!("model-{n}-a"), format!("model-{n}-b")];
    let mut case = Case {
        tenant,
        campaigns,
        ids: Vec::new(),
        channels: Vec::new(),
        campaign_of: Vec::new(),
        notices: Vec::new(),
        notice_of: Vec::new(),
        calls: Vec::new(),
    };
    for (message, spec) in history.messages.iter().enumerate() {
        let id = if spec.email {
            format!("ses-model{n}-{message}")
        } else {
            format!("wamid.model{n}.{message}")
        };
        let mail_ms = BASE_SECS * 1000 + 1_000 * i64::try_from(message).unwrap();
        let mut failure_times = HashSet::new();
        let mut indexes = Vec::new();
        for (event, each) in spec.events.iter().enumerate() {
            let index = case.notices.len();
            let title = format!("failure {n}.{message}.{event}");
            let notice = if spec.email {
                let (name, status) = SES[each.kind];
                let mut ts_ms = if DATED_BY_MAIL.contains(&name) {
                    mail_ms
                } else {
                    mail_ms + each.offset
                };
                // No two failures of a message tie: which one's reason is
                // kept must not depend on arrival.
                if status == Some(FAILED) {
                    while !failure_times.insert(ts_ms) {
                        ts_ms += 1;
                    }
                }
                let form = if each.identity_form {
                    "notificationType"
                } else {
                    "eventType"
                };
                let sns_id = format!("sns-model{n}-{message}-{event}");
                let body = ses_event(name, form, &id, mail_ms, ts_ms, &title);
                let version = if event % 2 == 0 { "2" } else { "1" };
                Notice {
                    index,
                    message,
                    key: format!("sns:{sns_id}"),
                    event: name.to_owned(),
                    status,
                    ts_ms,
                    failure: (status == Some(FAILED)).then(|| KeptFailure {
                        ts_ms,
                        title: title.clone(),
                        code_parts: if name == "Bounce" {
                            vec!["Transient".to_owned(), "MailboxFull".to_owned()]
                        } else {
                            Vec::new()
                        },
                    }),
                    wire: Wire::Sns(signer.notification(&sns_id, &body, version)),
                }
            } else {
                let (value, status) = WHATSAPP[each.kind];
                let seconds = BASE_SECS + each.offset;
                let code = 131_000 + i64::try_from(message).unwrap();
                let error = (status == Some(FAILED)).then_some((code, title.as_str()));
                Notice {
                    index,
                    message,
                    key: format!("wa:{id}:{value}"),
                    event: value.to_owned(),
                    status,
                    ts_ms: seconds * 1000,
                    failure: error.map(|(code, title)| KeptFailure {
                        ts_ms: seconds * 1000,
                        title: title.to_owned(),
                        code_parts: vec![code.to_string()],
                    }),
                    wire: Wire::WhatsApp(whatsapp_status(&id, value, seconds, error)),
                }
            };
            case.notices.push(notice);
            indexes.push(index);
        }
        case.notice_of.push(indexes);
        case.ids.push(id);
        case.channels
            .push(if spec.email { "email" } else { "whatsapp" });
        case.campaign_of.push(spec.campaign);
    }

    // Consecutive WhatsApp statuses share a payload, consecutive
    // registrations of one campaign a request, up to the group's size.
    let mut sizes = history.groups.iter().copied().cycle();
    let mut limit = 0;
    for item in &history.order {
        match *item {
            Item::Notify { message, event } => {
                let index = case.notice_of[message][event];
                match (&case.notices[index].wire, case.calls.last_mut()) {
                    (Wire::Sns(_), _) => case.calls.push(Call::Sns(index)),
                    (Wire::WhatsApp(_), Some(Call::WhatsApp(group))) if group.len() < limit => {
                        group.push(index);
                    }
                    (Wire::WhatsApp(_), _) => {
                        limit = sizes.next().unwrap_or(1);
                        case.calls.push(Call::WhatsApp(vec![index]));
                    }
                }
            }
            Item::Register { message } => {
                let campaign = case.campaign_of[message];
                match case.calls.last_mut() {
                    Some(Call::Register {
                        campaign: last,
                        messages,
                    }) if *last == campaign
                        && !messages.contains(&message)
                        && messages.len() < limit =>
                    {
                        messages.push(message);
                    }
                    _ => {
                        limit = sizes.next().unwrap_or(1);
                        case.calls.push(Call::Register {
                            campaign,
                            messages: vec![message],
                        });
                    }
                }
            }
        }
    }
    case
}

// ---------------------------------------------------------------------------
// Running a case against the hub.

/// What the cases of a run covered: the run fails if a kind of history
/// never came up (a generator gone quiet tests nothing).
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    concurrent: usize,
    whatsapp_calls: usize,
    whatsapp_batches: usize,
    sns_calls: usize,
    registrations: usize,
    redeliveries: usize,
    applied_at_registration: usize,
    never_registered: usize,
    registered_twice: usize,
    failures: usize,
}

impl Coverage {
    fn add(&mut self, history: &History, case: &Case) {
        self.cases += 1;
        self.concurrent += usize::from(history.concurrent);
        for call in &case.calls {
            match call {
                Call::WhatsApp(group) => {
                    self.whatsapp_calls += 1;
                    self.whatsapp_batches += usize::from(group.len() > 1);
                }
                Call::Sns(_) => self.sns_calls += 1,
                Call::Register { .. } => self.registrations += 1,
            }
        }
        for spec in &history.messages {
            self.redeliveries += spec.events.iter().map(|e| e.redeliveries).sum::<usize>();
            self.never_registered += usize::from(spec.registrations == 0);
            self.registered_twice += usize::from(spec.registrations == 2);
        }
        self.failures += case
            .notices
            .iter()
            .filter(|notice| notice.failure.is_some())
            .count();
        // A notification that came before its message's first registration.
        let mut registered = HashSet::new();
        for item in &history.order {
            match *item {
                Item::Register { message } => {
                    registered.insert(message);
                }
                Item::Notify { message, .. } => {
                    let later = history.messages[message].registrations > 0;
                    self.applied_at_registration +=
                        usize::from(later && !registered.contains(&message));
                }
            }
        }
    }

    fn assert_broad(&self) {
        let all = [
            self.concurrent,
            self.cases - self.concurrent,
            self.whatsapp_calls,
            self.whatsapp_batches,
            self.sns_calls,
            self.registrations,
            self.redeliveries,
            self.applied_at_registration,
            self.never_registered,
            self.registered_twice,
            self.failures,
        ];
        assert!(all.iter().all(|count| *count > 0), "thin run: {self:#?}");
    }
}

/// Posts one call; returns its status code and JSON answer.
async fn post(app: &TestApp, case: &Case, call: &Call) -> (u16, Value) {
    let response = match call {
        Call::WhatsApp(indexes) => {
            let statuses: Vec<Value> = indexes
                .iter()
                .map(|index| match &case.notices[*index].wire {
                    Wire::WhatsApp(status) => status.clone(),
                    Wire::Sns(_) => unreachable!(),
                })
                .collect();
            app.post_whatsapp(&statushub::webhooks::whatsapp::envelope(statuses))
                .await
        }
        Call::Sns(index) => match &case.notices[*index].wire {
            Wire::Sns(envelope) => app.post_sns(envelope).await,
            Wire::WhatsApp(_) => unreachable!(),
        },
        Call::Register { campaign, messages } => {
            let body: Vec<Value> = messages
                .iter()
                .map(|message| {
                    json!({"tenant_id": case.tenant, "campaign_id": case.campaigns[*campaign],
                           "channel": case.channels[*message], "provider_message_id": case.ids[*message]})
                })
                .collect();
            app.register_with(ADMIN_TOKEN, &Value::Array(body)).await
        }
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Returns `{status name: first timestamp (ms)}` of a message view's seen set.
fn seen_of(view: &Value) -> BTreeMap<String, Option<i64>> {
    view["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seen| {
            (
                seen["status"].as_str().unwrap().to_owned(),
                seen["first_at"].as_str().map(parse_ms),
            )
        })
        .collect()
}

/// Returns a message view's timeline as sorted (event, status, ms).
fn timeline_of(view: &Value) -> Vec<(String, Option<String>, i64)> {
    let mut timeline: Vec<_> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["event"].as_str().unwrap().to_owned(),
                event["status"].as_str().map(str::to_owned),
                parse_ms(event["provider_at"].as_str().unwrap()),
            )
        })
        .collect();
    timeline.sort();
    timeline
}

async fn run_case(app: &TestApp, history: &History, case: &Case) -> Result<(), TestCaseError> {
    let mut model = Model {
        messages: vec![ModelMessage::default(); case.ids.len()],
        ..Model::default()
    };
    let token = app.tenant_token(&case.tenant, None);
    let mut stream = app.open_stream("/api/v1/stream", &token, None).await;

    // Post: one call at a time (every receipt predicted), or four at a time.
    let mut answers = Vec::new();
    let mut expected = Vec::new();
    if history.concurrent {
        answers = futures_util::stream::iter(&case.calls)
            .map(|call| post(app, case, call))
            .buffered(4)
            .collect()
            .await;
    }
    for (index, call) in case.calls.iter().enumerate() {
        let receipt = match call {
            Call::WhatsApp(indexes) => {
                let notices: Vec<&Notice> =
                    indexes.iter().map(|index| &case.notices[*index]).collect();
                model.deliver(&notices, &case.campaign_of)
            }
            Call::Sns(index) => model.deliver(&[&case.notices[*index]], &case.campaign_of),
            Call::Register { campaign, messages } => {
                model.register(*campaign, messages, &case.notices)
            }
        };
        if !history.concurrent {
            answers.push(post(app, case, call).await);
        }
        let (status, answer) = &answers[index];
        prop_assert_eq!(*status, 200, "call {} {:?}: {}", index, call, answer);
        expected.push(receipt);
    }
    if history.concurrent {
        // Racing calls split the work differently, never the totals.
        let sum = |key: &str, register: bool| -> i64 {
            case.calls
                .iter()
                .zip(&answers)
                .filter(|(call, _)| matches!(call, Call::Register { .. }) == register)
                .map(|(_, (_, answer))| answer[key].as_i64().unwrap())
                .sum()
        };
        let deliveries: i64 = history
            .messages
            .iter()
            .flat_map(|spec| &spec.events)
            .map(|event| i64::try_from(event.redeliveries).unwrap() + 1)
            .sum();
        let distinct = i64::try_from(case.notices.len()).unwrap();
        prop_assert_eq!(sum("received", false), deliveries);
        prop_assert_eq!(sum("applied", false) + sum("unmatched", false), distinct);
        prop_assert_eq!(sum("duplicates", false), deliveries - distinct);
        let registered = model.messages.iter().filter(|m| m.registered).count();
        prop_assert_eq!(sum("registered", true), i64::try_from(registered).unwrap());
    } else {
        for (index, (answer, receipt)) in answers.iter().zip(&expected).enumerate() {
            prop_assert_eq!(
                &answer.1,
                receipt,
                "receipt of call {} {:?}",
                index,
                &case.calls[index]
            );
        }
    }

    // Every message, as the API shows it.
    let mut changes = [0i64; 2];
    for (index, message) in model.messages.iter().enumerate() {
        let path = format!(
            "/api/v1/messages/{}/{}",
            case.channels[index], case.ids[index]
        );
        if !message.registered {
            let response = app.get(&path, ADMIN_TOKEN).await;
            prop_assert_eq!(
                response.status().as_u16(),
                404,
                "{} is not registered",
                path
            );
            let buffered = app
                .db
                .buffered(case.channels[index], &case.ids[index])
                .await;
            prop_assert_eq!(
                buffered,
                i64::try_from(message.buffered.len()).unwrap(),
                "buffered statuses of {}",
                path
            );
            continue;
        }
        let view = app.message(case.channels[index], &case.ids[index]).await;
        prop_assert_eq!(
            view["status"].as_str(),
            Some(current(message.seen)),
            "{}",
            view
        );
        let seen: BTreeMap<String, Option<i64>> = STATUSES
            .iter()
            .filter(|(bit, _)| message.seen & bit != 0)
            .map(|(bit, name)| ((*name).to_owned(), message.first.get(bit).copied()))
            .collect();
        prop_assert_eq!(seen_of(&view), seen, "seen set of {}", view);
        let mut timeline: Vec<(String, Option<String>, i64)> = message
            .timeline
            .iter()
            .map(|(event, status, ts)| (event.clone(), status.map(str::to_owned), *ts))
            .collect();
        timeline.sort();
        prop_assert_eq!(timeline_of(&view), timeline, "timeline of {}", view);
        match &message.failure {
            None => prop_assert!(view["error"].is_null(), "no failure expected: {}", view),
            Some(failure) => {
                prop_assert_eq!(
                    view["error"]["title"].as_str(),
                    Some(failure.title.as_str()),
                    "earliest failure of {}",
                    view
                );
                let code = view["error"]["code"].as_str().unwrap_or_default();
                for part in &failure.code_parts {
                    prop_assert!(code.contains(part.as_str()), "code {} of {}", code, view);
                }
            }
        }
        changes[case.campaign_of[index]] += i64::try_from(
            view["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|event| event["changed"] == true)
                .count(),
        )
        .unwrap();
    }

    // Every campaign: counters against the model, the SQL recount and the
    // stored row; the version against its own bookkeeping.
    let mut finals = BTreeMap::new();
    for (campaign, name) in case.campaigns.iter().enumerate() {
        if !model.exists[campaign] {
            continue;
        }
        let metrics = app.assert_counts_agree(name).await;
        prop_assert_eq!(
            counts_only(&metrics),
            model.counts(campaign, &case.campaign_of),
            "counters of {}",
            name
        );
        let registrations = case
            .calls
            .iter()
            .zip(&answers)
            .filter(|(call, (_, answer))| {
                matches!(call, Call::Register { campaign: of, .. } if *of == campaign)
                    && answer["registered"].as_i64() > Some(0)
            })
            .count();
        // Every registration and every change took one version.
        prop_assert_eq!(
            metrics["version"].as_i64(),
            Some(i64::try_from(registrations).unwrap() + changes[campaign]),
            "version of {}",
            name
        );
        if !history.concurrent {
            prop_assert_eq!(metrics["version"].as_i64(), Some(model.versions[campaign]));
        }
        finals.insert(name.clone(), metrics);
    }

    // The live stream ends on the same counters.
    if !finals.is_empty() {
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        stream
            .until(Duration::from_secs(20), |event| {
                if let Ok(data) = serde_json::from_str::<Value>(&event.data) {
                    if let Some(campaign) = data["campaign_id"].as_str() {
                        latest.insert(campaign.to_owned(), data);
                    }
                }
                finals.iter().all(|(name, metrics)| {
                    latest
                        .get(name)
                        .is_some_and(|data| data["version"] == metrics["version"])
                })
            })
            .await;
        for (name, metrics) in &finals {
            prop_assert_eq!(
                counts_only(&latest[name]),
                counts_only(metrics),
                "stream of {}",
                name
            );
        }
    }
    Ok(())
}

#[test]
fn the_hub_agrees_with_a_reference_model_of_the_spec() {
    let cases = std::env::var(CASES_VAR).map_or(DEFAULT_CASES, |value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_VAR} must be a number"))
    });
    let system = actix_web::rt::System::new();
    let signer = SnsSigner::new();
    let cert_dir = signer.cert_dir();
    let app = system.block_on(spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(cert_dir);
    }));
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&history(), |history| {
        let case = dress(&history, &signer);
        coverage.borrow_mut().add(&history, &case);
        system.block_on(run_case(&app, &history, &case))
    });
    match result {
        Ok(()) => {
            let coverage = coverage.into_inner();
            eprintln!("{coverage:#?}");
            coverage.assert_broad();
        }
        Err(TestError::Fail(reason, history)) => {
            panic!("{reason}\nsmallest failing history: {history:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
}
