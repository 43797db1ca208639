//! Dressing a history for the wire.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::generators::{History, Item};
use super::reference::{BASE_SECS, DATED_BY_MAIL, FAILED, KeptFailure, SES, WHATSAPP};
use crate::helpers::*;

/// One distinct provider notification, ready to post.
#[derive(Clone, Debug)]
pub(super) struct Notice {
    /// Its index in the case's notices.
    pub(super) index: usize,
    pub(super) message: usize,
    /// What makes two deliveries the same notification.
    pub(super) key: String,
    /// The provider's name of the event, as the timeline shows it.
    pub(super) event: String,
    pub(super) status: Option<u8>,
    pub(super) ts_ms: i64,
    pub(super) failure: Option<KeptFailure>,
    pub(super) wire: Wire,
}

#[derive(Clone, Debug)]
pub(super) enum Wire {
    /// A status object for a WhatsApp payload.
    WhatsApp(Value),
    /// A signed SNS envelope.
    Sns(Value),
}

/// One HTTP call of a case.
#[derive(Clone, Debug)]
pub(super) enum Call {
    WhatsApp(Vec<usize>),
    Sns(usize),
    Register {
        campaign: usize,
        messages: Vec<usize>,
    },
}

/// A case: names, notices and calls.
pub(super) struct Case {
    pub(super) tenant: String,
    pub(super) campaigns: [String; 2],
    pub(super) ids: Vec<String>,
    pub(super) channels: Vec<&'static str>,
    pub(super) campaign_of: Vec<usize>,
    pub(super) notices: Vec<Notice>,
    /// Per message and event: the notice's index.
    notice_of: Vec<Vec<usize>>,
    pub(super) calls: Vec<Call>,
}

/// Adds Meta's `pricing` object to a status that is not a failure: the
/// category follows the message, and `read` says free where the others say
/// billable, so which status's pricing a message keeps shows in the counts.
fn priced(mut status: Value, message: usize) -> Value {
    let value = status["status"].as_str().unwrap_or_default().to_owned();
    if matches!(value.as_str(), "sent" | "delivered" | "read" | "played") {
        let category = ["marketing", "utility", "service"][message % 3];
        status["pricing"] = json!({"billable": value != "read", "pricing_model": "CBP",
                                   "category": category});
    }
    status
}

fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

pub(super) fn parse_ms(text: &str) -> i64 {
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
pub(super) fn dress(history: &History, signer: &SnsSigner) -> Case {
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
                    wire: Wire::WhatsApp(priced(
                        whatsapp_status(&id, value, seconds, error),
                        message,
                    )),
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
