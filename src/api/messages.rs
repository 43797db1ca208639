//! `POST /api/v1/messages` (registration) and
//! `GET /api/v1/messages/{channel}/{id}` (status and timeline).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::clock::format_ms;
use crate::domain::{Channel, CurrentStatus, Failure, Status};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::{NewMessage, RegisterReceipt, Store, StoredEvent, StoredMessage};

/// Longest accepted id (tenant, campaign, provider message id, recipient).
const MAX_ID_LEN: usize = 256;

/// One message to register, as senders post it: a JSON object with exactly
/// these keys. Each id is 1 to 256 bytes (UTF-8) without control
/// characters.
// serde's derive would also take the values as an array, by position;
// [`Entry`]'s own `Deserialize` accepts objects only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    /// Created on first use; a tenant token may only name its own.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    tenant_id: String,
    /// Created on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    campaign_id: String,
    /// `whatsapp` or `email`.
    #[schema(value_type = Channel)]
    channel: String,
    /// Meta's `wamid…` or SES's `messageId`.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    provider_message_id: String,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    recipient: Option<String>,
}

/// A registration body: one object, or an array of them (NDJSON, one
/// object a line, is documented as `application/x-ndjson`). Only the
/// document's view: the body is read by [`parse_body`].
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum Registrations {
    /// One message.
    One(Registration),
    /// Several messages.
    Many(Vec<Registration>),
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
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "api",
    request_body(content(
        (Registrations = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"tenant_id\":\"acme\",\"campaign_id\":\"spring\",\"channel\":\"whatsapp\",\"provider_message_id\":\"wamid.1\"}\n")),
    )),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "Registered (idempotent): what became of each message", body = RegisterReceipt),
        (status = 400, description = "A body that does not parse, holds no message, or an id out of bounds: nothing stored", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "A message of another tenant, or of a campaign the token does not cover: nothing stored", body = ErrorBody),
        (status = 408, description = crate::openapi::TIMEOUT, body = ErrorBody),
        (status = 413, description = crate::openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = crate::openapi::COMPRESSED, body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/messages/{channel}/{provider_message_id}",
    tag = "api",
    params(
        ("channel" = String, Path, description = "`whatsapp` or `email` (anything else: 404)", example = "whatsapp"),
        ("provider_message_id" = String, Path, description = "The provider's message id", example = "wamid.HBgL1"),
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The message and its timeline", body = MessageView),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "No such message the token may read (another tenant's answers the same)", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
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
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MessageView {
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
#[derive(Debug, Serialize, ToSchema)]
struct SeenStatus {
    status: Status,
    #[schema(format = DateTime)]
    first_at: Option<String>,
}

/// One provider notification in a message's timeline.
#[derive(Debug, Serialize, ToSchema)]
struct TimelineEvent {
    id: i64,
    event: String,
    status: Option<Status>,
    /// Whether this event changed the message's status set.
    changed: bool,
    #[schema(format = DateTime)]
    provider_at: String,
    #[schema(format = DateTime)]
    received_at: String,
    /// What the provider said beyond the status (error codes, SES fields).
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
