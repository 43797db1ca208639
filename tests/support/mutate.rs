//! What the fuzz tests (`tests/fuzz.rs`, `tests/api/fuzz.rs`) feed the
//! parsers: realistic seeds (the provider captures in `../shared/vectors/`,
//! read in place, and seeds built here), proptest strategies that mutate them
//! structurally and then byte by byte, and raw-byte generators.
//!
//! Mutations work on [`Doc`], a JSON tree that, unlike `serde_json::Value`,
//! can repeat a key and hold any number text (`1e400`, twenty-digit
//! integers), so that what reaches a parser is exactly what an attacker could
//! send.

#![allow(dead_code)]

use std::fmt;
use std::path::PathBuf;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

#[path = "vocabulary.rs"]
mod vocabulary;

use vocabulary::{KEYS, NUMBERS, PIECES, STRINGS, TOKENS};

#[path = "doc.rs"]
mod doc;

pub use doc::Doc;

/// Deepest a [`Mutation::Nest`] may make a document (serde_json stops at
/// 128; past that the parsers must refuse cleanly).
const MAX_DEPTH: usize = 300;

fn any_node(_: &Doc) -> bool {
    true
}

fn is_container(node: &Doc) -> bool {
    matches!(node, Doc::Arr(_) | Doc::Obj(_))
}

fn is_filled_container(node: &Doc) -> bool {
    node.len() > 0
}

fn is_filled_object(node: &Doc) -> bool {
    matches!(node, Doc::Obj(entries) if !entries.is_empty())
}

/// A JSON type to turn a node into.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Null,
    Bool,
    Num,
    Str,
    Arr,
    Obj,
}

/// Turns `node` into `kind`, keeping what can be kept: `"17"` becomes `17`
/// and back, a container becomes the JSON text of itself as a string (as an
/// SNS `Message` holds its SES event), a scalar is wrapped.
fn retype(node: Doc, kind: Kind) -> Doc {
    match kind {
        Kind::Null => Doc::Null,
        Kind::Bool => Doc::Bool(!matches!(node, Doc::Null | Doc::Bool(false))),
        Kind::Num => Doc::Num(match node {
            Doc::Num(number) => number,
            Doc::Str(text) if serde_json::from_str::<serde_json::Number>(text.trim()).is_ok() => {
                text.trim().to_owned()
            }
            Doc::Bool(flag) => u8::from(flag).to_string(),
            Doc::Null => "0".to_owned(),
            Doc::Str(text) => text.len().to_string(),
            other => other.len().to_string(),
        }),
        Kind::Str => Doc::Str(match node {
            Doc::Str(text) => text,
            Doc::Num(number) => number,
            other => other.text(),
        }),
        Kind::Arr => match node {
            Doc::Obj(entries) => Doc::Arr(entries.into_iter().map(|(_, value)| value).collect()),
            other => Doc::Arr(vec![other]),
        },
        Kind::Obj => match node {
            Doc::Arr(items) => Doc::Obj(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(position, item)| (position.to_string(), item))
                    .collect(),
            ),
            other => Doc::Obj(vec![("value".to_owned(), other)]),
        },
    }
}

/// One structural change to a document. Each picks its node among those it
/// applies to and does nothing when there is none.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Replaces any node (the root too) with another value.
    Replace { node: Index, with: Doc },
    /// Changes a node's type.
    Retype { node: Index, to: Kind },
    /// Removes a key of an object or an item of an array.
    Remove { node: Index, entry: Index },
    /// Repeats a key (with its value, or another) or an array item.
    Duplicate {
        node: Index,
        entry: Index,
        with: Option<Doc>,
    },
    /// Renames a key.
    Rename {
        node: Index,
        entry: Index,
        to: String,
    },
    /// Adds a key or an item.
    Insert { node: Index, key: String, with: Doc },
    /// Buries a node `depth` levels deep in arrays or objects.
    Nest {
        node: Index,
        depth: usize,
        in_objects: bool,
    },
}

impl Mutation {
    pub fn apply(self, doc: &mut Doc) {
        match self {
            Mutation::Replace { node, with } => {
                if let Some(target) = doc.pick_mut(&node, any_node) {
                    *target = with;
                }
            }
            Mutation::Retype { node, to } => {
                if let Some(target) = doc.pick_mut(&node, any_node) {
                    let old = std::mem::replace(target, Doc::Null);
                    *target = retype(old, to);
                }
            }
            Mutation::Remove { node, entry } => match doc.pick_mut(&node, is_filled_container) {
                Some(Doc::Arr(items)) => {
                    items.remove(entry.index(items.len()));
                }
                Some(Doc::Obj(entries)) => {
                    entries.remove(entry.index(entries.len()));
                }
                _ => {}
            },
            Mutation::Duplicate { node, entry, with } => {
                match doc.pick_mut(&node, is_filled_container) {
                    Some(Doc::Arr(items)) => {
                        let at = entry.index(items.len());
                        let copy = with.unwrap_or_else(|| items[at].clone());
                        items.insert(at + 1, copy);
                    }
                    Some(Doc::Obj(entries)) => {
                        let at = entry.index(entries.len());
                        let (key, value) = entries[at].clone();
                        entries.insert(at + 1, (key, with.unwrap_or(value)));
                    }
                    _ => {}
                }
            }
            Mutation::Rename { node, entry, to } => {
                if let Some(Doc::Obj(entries)) = doc.pick_mut(&node, is_filled_object) {
                    let at = entry.index(entries.len());
                    entries[at].0 = to;
                }
            }
            Mutation::Insert { node, key, with } => match doc.pick_mut(&node, is_container) {
                Some(Doc::Arr(items)) => items.push(with),
                Some(Doc::Obj(entries)) => entries.push((key, with)),
                _ => {}
            },
            Mutation::Nest {
                node,
                depth,
                in_objects,
            } => {
                let depth = depth.min(MAX_DEPTH.saturating_sub(doc.depth()));
                if let Some(target) = doc.pick_mut(&node, any_node) {
                    let mut nested = std::mem::replace(target, Doc::Null);
                    for _ in 0..depth {
                        nested = if in_objects {
                            Doc::Obj(vec![("a".to_owned(), nested)])
                        } else {
                            Doc::Arr(vec![nested])
                        };
                    }
                    *target = nested;
                }
            }
        }
    }
}

/// One change to the serialized bytes.
#[derive(Clone, Debug)]
pub enum ByteOp {
    /// Cuts the text there.
    Truncate(Index),
    /// XORs one byte with a non-zero mask.
    Flip(Index, u8),
    /// Inserts bytes (a JSON token, an escape, invalid UTF-8).
    Insert(Index, Vec<u8>),
    /// Removes up to that many bytes.
    Delete(Index, usize),
}

impl ByteOp {
    pub fn apply(self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            ByteOp::Truncate(at) if len > 0 => bytes.truncate(at.index(len)),
            ByteOp::Flip(at, mask) if len > 0 => bytes[at.index(len)] ^= mask.max(1),
            ByteOp::Insert(at, inserted) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, inserted);
            }
            ByteOp::Delete(at, count) if len > 0 => {
                let at = at.index(len);
                bytes.drain(at..(at + count).min(len));
            }
            _ => {}
        }
    }
}

/// A generated body; shown as (lossy, shortened) text when a case fails.
#[derive(Clone)]
pub struct Body(pub Vec<u8>);

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 2048;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(
            f,
            "Body({} bytes: {:?}{})",
            self.0.len(),
            String::from_utf8_lossy(shown),
            if self.0.len() > SHOWN { "…" } else { "" }
        )
    }
}

impl Body {
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

pub fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(NUMBERS).prop_map(str::to_owned),
        2 => any::<i64>().prop_map(|number| number.to_string()),
        1 => any::<u64>().prop_map(|number| number.to_string()),
        1 => any::<f64>().prop_map(|number| if number.is_finite() {
            format!("{number:e}")
        } else {
            number.to_string()
        }),
        1 => (1usize..400).prop_map(|digits| "9".repeat(digits)),
    ]
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(STRINGS).prop_map(str::to_owned),
        2 => vec(any::<char>(), 0..24).prop_map(String::from_iter),
        2 => "[a-zA-Z0-9 ._:+/-]{0,24}",
        1 => (select(PIECES), 1usize..20_000).prop_map(|(piece, count)| piece.repeat(count)),
    ]
}

/// A key: one the parsers look for (or one of the seeds'), a case or
/// spacing variant of it, or any text.
fn key(known: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(known.clone()),
        1 => select(known).prop_map(|key| {
            if key.chars().next().is_some_and(char::is_uppercase) {
                key.to_lowercase()
            } else {
                key.to_uppercase()
            }
        }),
        1 => select(KEYS).prop_map(|key| format!("{key} ")),
        2 => text(),
    ]
}

pub fn scalar() -> impl Strategy<Value = Doc> {
    prop_oneof![
        1 => Just(Doc::Null),
        1 => any::<bool>().prop_map(Doc::Bool),
        3 => number().prop_map(Doc::Num),
        4 => text().prop_map(Doc::Str),
    ]
}

/// Any small JSON value, with keys drawn from `known`.
pub fn value(known: Vec<String>) -> BoxedStrategy<Doc> {
    scalar()
        .prop_recursive(3, 16, 4, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Doc::Arr),
                vec((key(known.clone()), inner), 0..4).prop_map(Doc::Obj),
            ]
        })
        .boxed()
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Null),
        Just(Kind::Bool),
        Just(Kind::Num),
        Just(Kind::Str),
        Just(Kind::Arr),
        Just(Kind::Obj),
    ]
}

pub fn mutation(known: Vec<String>) -> impl Strategy<Value = Mutation> {
    let value = value(known.clone());
    prop_oneof![
        4 => (any::<Index>(), value.clone())
            .prop_map(|(node, with)| Mutation::Replace { node, with }),
        4 => (any::<Index>(), kind()).prop_map(|(node, to)| Mutation::Retype { node, to }),
        3 => (any::<Index>(), any::<Index>())
            .prop_map(|(node, entry)| Mutation::Remove { node, entry }),
        2 => (any::<Index>(), any::<Index>(), proptest::option::of(value.clone()))
            .prop_map(|(node, entry, with)| Mutation::Duplicate { node, entry, with }),
        2 => (any::<Index>(), any::<Index>(), key(known.clone()))
            .prop_map(|(node, entry, to)| Mutation::Rename { node, entry, to }),
        2 => (any::<Index>(), key(known), value)
            .prop_map(|(node, key, with)| Mutation::Insert { node, key, with }),
        1 => (any::<Index>(), 1usize..200, any::<bool>())
            .prop_map(|(node, depth, in_objects)| Mutation::Nest { node, depth, in_objects }),
    ]
}

pub fn byte_op() -> impl Strategy<Value = ByteOp> {
    prop_oneof![
        2 => any::<Index>().prop_map(ByteOp::Truncate),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, mask)| ByteOp::Flip(at, mask)),
        3 => (any::<Index>(), select(TOKENS)).prop_map(|(at, token)| ByteOp::Insert(at, token.to_vec())),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, count)| ByteOp::Delete(at, count)),
    ]
}

/// The keys of `seeds` and of [`KEYS`], each once.
fn keys_of(seeds: &[Value]) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(entries) => {
                for (key, value) in entries {
                    out.push(key.clone());
                    walk(value, out);
                }
            }
            _ => {}
        }
    }
    let mut keys: Vec<String> = KEYS.iter().map(|key| (*key).to_owned()).collect();
    seeds.iter().for_each(|seed| walk(seed, &mut keys));
    keys.sort();
    keys.dedup();
    keys
}

/// A seed after one to six structural mutations, mostly one: each mutation
/// more makes it likelier that the parser stops at the first one.
pub fn mutated_doc(seeds: &[Value]) -> impl Strategy<Value = Doc> + use<> {
    let docs: Vec<Doc> = seeds.iter().map(Doc::from_value).collect();
    let known = keys_of(seeds);
    let mutations = prop_oneof![
        3 => vec(mutation(known.clone()), 1),
        2 => vec(mutation(known.clone()), 2..=3),
        1 => vec(mutation(known), 4..=6),
    ];
    (select(docs), mutations).prop_map(|(mut doc, mutations)| {
        for mutation in mutations {
            mutation.apply(&mut doc);
        }
        doc
    })
}

/// A seed mutated structurally, then (one time in three) byte by byte.
pub fn mutated(seeds: &[Value]) -> impl Strategy<Value = Body> + use<> {
    let byte_ops = prop_oneof![
        2 => Just(Vec::new()),
        1 => vec(byte_op(), 1..=3),
    ];
    (mutated_doc(seeds), byte_ops).prop_map(|(doc, ops)| {
        let mut bytes = doc.text().into_bytes();
        for op in ops {
            op.apply(&mut bytes);
        }
        Body(bytes)
    })
}

/// Bytes that owe nothing to the seeds: random bytes, random text, a soup of
/// JSON tokens, and random JSON values.
pub fn raw() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..512).prop_map(Body),
        1 => any::<String>().prop_map(|text| Body(text.into_bytes())),
        2 => vec(select(TOKENS), 0..64).prop_map(|tokens| Body(tokens.concat())),
        2 => value(keys_of(&[])).prop_map(|doc| Body(doc.text().into_bytes())),
    ]
}

/// The shared provider vectors directory joined with `sub`: beside the
/// project (`../shared/vectors`), else `STATUSHUB_VECTORS_DIR`. Panics when
/// it is absent: the fuzz seeds must be the real captures.
pub fn vectors_dir(sub: &str) -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors");
    let dir = if beside.is_dir() {
        beside
    } else {
        match std::env::var_os("STATUSHUB_VECTORS_DIR") {
            Some(dir) if PathBuf::from(&dir).is_dir() => PathBuf::from(dir),
            _ => panic!(
                "the fuzz seeds need the shared provider vectors at {} (or STATUSHUB_VECTORS_DIR)",
                beside.display()
            ),
        }
    };
    dir.join(sub)
}

/// Reads the JSON captures of `sub` in place; panics when there are none.
pub fn captures(sub: &str) -> Vec<Value> {
    let dir = vectors_dir(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no JSON captures in {}", dir.display());
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("a readable capture");
            serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
        })
        .collect()
}

/// Meta's captured status webhooks, and payloads built here with what the
/// captures lack: several statuses and entries, a numeric timestamp, a
/// string error code, an unknown status, a change of another field.
pub fn whatsapp_seeds() -> Vec<Value> {
    let mut seeds = captures("whatsapp");
    seeds.push(statushub::webhooks::whatsapp::envelope(vec![
        json!({"id": "wamid.seed-1", "status": "sent", "timestamp": "1700000000", "recipient_id": "15551234567",
               "conversation": {"id": "c", "origin": {"type": "marketing"}},
               "pricing": {"billable": true, "pricing_model": "CBP", "category": "marketing"},
               "biz_opaque_callback_data": "tracker"}),
        json!({"id": "wamid.seed-2", "status": "failed", "timestamp": 1_700_000_001,
               "errors": [{"code": "131026", "message": "Message undeliverable"}]}),
        json!({"id": "wamid.seed-3", "status": "deleted", "timestamp": "1700000002"}),
    ]));
    let mut two_entries = statushub::webhooks::whatsapp::envelope(vec![
        json!({"id": "wamid.seed-4", "status": "read", "timestamp": "1700000003"}),
    ]);
    two_entries["entry"]
        .as_array_mut()
        .expect("entries")
        .push(json!({"id": "2", "changes": [
            {"field": "message_template_status_update", "value": {"event": "APPROVED"}},
            {"value": {"statuses": [{"id": "wamid.seed-5", "status": "played", "timestamp": "1700000004"}]}}
        ]}));
    seeds.push(two_entries);
    seeds
}

/// AWS's documented SES events, and events built here in the other form
/// (`notificationType` for an event-publishing type and the reverse).
pub fn ses_seeds() -> Vec<Value> {
    let mut seeds = captures("ses");
    seeds.push(json!({
        "notificationType": "Reject",
        "mail": {"timestamp": "2024-05-01T12:00:00.000Z", "messageId": "seed-reject"},
        "reject": {"reason": "Bad content"}
    }));
    seeds.push(json!({
        "eventType": "Bounce",
        "mail": {"timestamp": "2024-05-01T12:00:00.000Z", "messageId": "seed-bounce"},
        "bounce": {"timestamp": "2024-05-01T12:00:02.000Z", "bounceType": "Transient",
                   "bounceSubType": "MailboxFull",
                   "bouncedRecipients": [{"emailAddress": "a@example.com", "diagnosticCode": "smtp; 452"}]}
    }));
    seeds.push(json!({"notificationType": "AmazonSnsSubscriptionSucceeded",
                      "message": "You have successfully subscribed your Amazon SNS topic"}));
    seeds
}

/// AWS's captured signed notifications, and envelopes built here of the
/// other types and with an SES event as the message.
pub fn sns_seeds() -> Vec<Value> {
    let mut seeds = captures("sns");
    for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
        seeds.push(json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37f",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37f",
            "Timestamp": "2012-04-26T20:45:04.751Z",
            "SignatureVersion": "1",
            "Signature": "c2lnbmF0dXJl",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
        }));
    }
    let ses = captures("ses");
    seeds.push(json!({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
        "Message": ses[0].to_string(),
        "Timestamp": "2024-05-01T12:00:00.123Z",
        "SignatureVersion": "2",
        "Signature": "c2lnbmF0dXJl",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        "MessageAttributes": {"k": {"Type": "String", "Value": "v"}}
    }));
    seeds
}

/// One registration as senders post it.
pub fn registration(id: &str) -> Value {
    json!({"tenant_id": "t1", "campaign_id": "c1", "channel": "whatsapp",
           "provider_message_id": id, "recipient": "15551234567"})
}

/// Registration bodies: an array, and single objects (also NDJSON lines).
pub fn registration_seeds() -> Vec<Value> {
    vec![
        json!([registration("wamid.r1"),
               {"tenant_id": "t1", "campaign_id": "c2", "channel": "email", "provider_message_id": "ses-r2"}]),
        registration("wamid.r3"),
        json!({"tenant_id": "t2", "campaign_id": "c3", "channel": "email", "provider_message_id": "ses-r4"}),
    ]
}

/// NDJSON registration bodies: mutated objects, one per line, with blank
/// lines and either line ending.
pub fn registration_ndjson() -> impl Strategy<Value = Body> {
    let line = prop_oneof![
        3 => mutated(&registration_seeds()[1..]),
        1 => Just(Body(registration("wamid.ok").to_string().into_bytes())),
        1 => Just(Body(b"   ".to_vec())),
    ];
    (vec(line, 1..6), any::<bool>()).prop_map(|(lines, crlf)| {
        let separator: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        Body(
            lines
                .into_iter()
                .map(|line| line.0)
                .collect::<Vec<_>>()
                .join(separator),
        )
    })
}
