//! `POST /api/v1/messages` (registration) and
//! `GET /api/v1/messages/{channel}/{id}` (status and timeline).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::clock::format_ms;
use crate::domain::{Channel, CurrentStatus, Failure, Status};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{NewMessage, RegisterReceipt, Store, StoredEvent, StoredMessage};

/// Longest accepted id (tenant, campaign, provider message id, recipient).
const MAX_ID_LEN: usize = 256;

/// One message to register, as senders post it: a JSON object with exactly
/// these keys. (serde's derive would also take the values as an array, by
/// position; [`Registration`]'s own `Deserialize` accepts objects only.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    tenant_id: String,
    campaign_id: String,
    channel: String,
    provider_message_id: String,
    #[serde(default)]
    recipient: Option<String>,
}

/// Reads a [`Registration`] from a JSON object only.
#[derive(Debug)]
struct ObjectOnly;

impl<'de> serde::de::Visitor<'de> for ObjectOnly {
    type Value = Registration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a registration object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Registration, A::Error> {
        Registration::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// A registration as the body holds it: an object, never an array.
struct Entry(Registration);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectOnly).map(Entry)
    }
}

/// Unwraps parsed entries.
fn entries(entries: Vec<Entry>) -> Vec<Registration> {
    entries
        .into_iter()
        .map(|Entry(registration)| registration)
        .collect()
}

/// Parses a JSON array, a single object, or NDJSON (one object per line).
fn parse_body(body: &[u8]) -> Result<Vec<Registration>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("body is not UTF-8".to_owned()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<Entry>>(trimmed)
            .map(entries)
            .map_err(|error| ApiError::BadRequest(format!("invalid JSON array: {error}")));
    }
    // One object, however it is laid out (pretty-printed over several
    // lines); otherwise NDJSON, one object a line.
    if let Ok(Entry(one)) = serde_json::from_str::<Entry>(trimmed) {
        return Ok(vec![one]);
    }
    let mut registrations = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Entry(registration) = serde_json::from_str(line)
            .map_err(|error| ApiError::BadRequest(format!("line {}: {error}", index + 1)))?;
        registrations.push(registration);
    }
    Ok(registrations)
}

/// Parses a registration body as [`register`] does and returns how many
/// messages it holds: public so the fuzz tests (`tests/fuzz.rs`) reach it.
pub fn parse_registrations(body: &[u8]) -> Result<usize, ApiError> {
    parse_body(body).map(|registrations| registrations.len())
}

fn check_id(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// Registers messages (idempotent), creating tenants and campaigns on first
/// use, and applies statuses that arrived before them. Everything is
/// validated before anything is stored.
pub async fn register(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let registrations = parse_body(&body)?;
    if registrations.is_empty() {
        return Err(ApiError::BadRequest("no messages in body".to_owned()));
    }
    let mut by_campaign: BTreeMap<(String, String), Vec<NewMessage>> = BTreeMap::new();
    for (index, registration) in registrations.into_iter().enumerate() {
        let at = |error: ApiError| match error {
            ApiError::BadRequest(message) => {
                ApiError::BadRequest(format!("message {index}: {message}"))
            }
            other => other,
        };
        check_id("tenant_id", &registration.tenant_id).map_err(at)?;
        check_id("campaign_id", &registration.campaign_id).map_err(at)?;
        check_id("provider_message_id", &registration.provider_message_id).map_err(at)?;
        if let Some(recipient) = &registration.recipient {
            check_id("recipient", recipient).map_err(at)?;
        }
        let channel = Channel::parse(&registration.channel).ok_or_else(|| {
            at(ApiError::BadRequest(
                "channel must be \"whatsapp\" or \"email\"".to_owned(),
            ))
        })?;
        caller.require_campaign(&registration.tenant_id, &registration.campaign_id)?;
        by_campaign
            .entry((registration.tenant_id, registration.campaign_id))
            .or_default()
            .push(NewMessage {
                channel,
                provider_message_id: registration.provider_message_id,
                recipient: registration.recipient,
            });
    }
    let mut total = RegisterReceipt::default();
    for ((tenant_id, campaign_id), messages) in by_campaign {
        let campaign_pk = state.hub.ensure_campaign(&tenant_id, &campaign_id).await?;
        total += state.hub.register(campaign_pk, messages).await?;
    }
    Ok(HttpResponse::Ok().json(total))
}

/// Returns a message's current status, seen set and timeline.
pub async fn show(
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (channel, provider_message_id) = path.into_inner();
    let channel = Channel::parse(&channel).ok_or(ApiError::NotFound("unknown channel"))?;
    // Another tenant's message (or one outside the token's campaigns)
    // answers exactly like an unknown one: no existence leak.
    let message = store
        .message(channel, &provider_message_id)
        .await?
        .filter(|message| {
            caller
                .require_campaign(&message.tenant_id, &message.campaign_id)
                .is_ok()
        })
        .ok_or(ApiError::NotFound("no such message"))?;
    Ok(HttpResponse::Ok().json(MessageView::from(message)))
}

/// A message and its timeline, as [`show`] answers.
#[derive(Debug, Serialize)]
struct MessageView {
    tenant_id: String,
    campaign_id: String,
    channel: Channel,
    provider_message_id: String,
    recipient: Option<String>,
    status: CurrentStatus,
    seen: Vec<SeenStatus>,
    error: Option<Failure>,
    timeline: Vec<TimelineEvent>,
}

/// One status of a message's seen set, with its first provider timestamp
/// (absent for a status that was only implied).
#[derive(Debug, Serialize)]
struct SeenStatus {
    status: Status,
    first_at: Option<String>,
}

/// One provider notification in a message's timeline.
#[derive(Debug, Serialize)]
struct TimelineEvent {
    id: i64,
    event: String,
    status: Option<Status>,
    /// Whether this event changed the message's status set.
    changed: bool,
    provider_at: String,
    received_at: String,
    details: serde_json::Value,
}

impl From<StoredMessage> for MessageView {
    fn from(message: StoredMessage) -> Self {
        let set = message.set;
        MessageView {
            tenant_id: message.tenant_id,
            campaign_id: message.campaign_id,
            channel: message.channel,
            provider_message_id: message.provider_message_id,
            recipient: message.recipient,
            status: message.status,
            seen: Status::ALL
                .into_iter()
                .filter(|status| set.contains(*status))
                .map(|status| SeenStatus {
                    status,
                    first_at: set.first_seen(status).map(format_ms),
                })
                .collect(),
            error: message.failure,
            timeline: message
                .timeline
                .into_iter()
                .map(TimelineEvent::from)
                .collect(),
        }
    }
}

impl From<StoredEvent> for TimelineEvent {
    fn from(event: StoredEvent) -> Self {
        TimelineEvent {
            id: event.id,
            event: event.event,
            status: event.status,
            changed: event.changed,
            provider_at: format_ms(event.provider_ts_ms),
            received_at: format_ms(event.received_at_ms),
            details: event.details,
        }
    }
}
