//! Ops and debug endpoints: `/healthz`, `/readyz` (open), and `/metrics`,
//! `/webhooks/health`, `/webhooks/events`, `/webhooks/dead-letters` and
//! `POST /webhooks/dead-letters/{id}/replay` (admin token). `/` serves the debug page, which holds no data itself: it asks
//! for the admin token and calls the admin endpoints with it.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::Caller;
use crate::clock::format_ms;
use crate::domain::{Channel, Status};
use crate::error::{ApiError, ErrorBody};
use crate::sse::StreamLimiter;
use crate::state::AppState;
use crate::store::{
    DeadLetterState, ReceiptVerification, RecentEvent, RecentKind, ReplayRecord, Store, StoreStats,
    StoredDeadLetter,
};
use crate::webhooks::ses::{PendingConfirmation, SnsSubscriptions, SubscriptionOutcome};

/// Most events `/webhooks/events` returns.
const MAX_EVENTS: u32 = 1000;

/// Most dead letters one page of `/webhooks/dead-letters` returns.
const MAX_DEAD_LETTERS: u32 = 200;

/// Bytes of each body a dead-letter listing shows; the whole body is at
/// `/webhooks/dead-letters/{id}`. A page is thus at most about
/// `MAX_DEAD_LETTERS` × this, whatever was stored.
const LISTED_BODY_BYTES: u32 = 1024;

/// Events `/webhooks/health` includes.
const HEALTH_RECENT_EVENTS: u32 = 10;

/// The OpenAPI description of the routes [`configure`] registers: a route
/// added there is annotated with `#[utoipa::path]` and listed here.
#[derive(Debug, OpenApi)]
#[openapi(paths(
    debug_page,
    healthz,
    readyz,
    metrics,
    health,
    events,
    dead_letters,
    dead_letter,
    replay_dead_letter
))]
pub struct Doc;

/// Registers the ops routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(debug_page))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/webhooks/health", web::get().to(health))
        .route("/webhooks/events", web::get().to(events))
        .route("/webhooks/dead-letters", web::get().to(dead_letters))
        .route("/webhooks/dead-letters/{id}", web::get().to(dead_letter))
        .route(
            "/webhooks/dead-letters/{id}/replay",
            web::post().to(replay_dead_letter),
        );
}

/// The debug page: holds no data, asks for the admin token.
#[utoipa::path(
    get,
    path = "/",
    tag = "ops",
    responses((status = 200, description = "The debug page (self-contained HTML)", body = String, content_type = "text/html"))
)]
async fn debug_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(include_str!("../static/index.html"))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain", example = "ok"))
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok")
}

/// Readiness: every table of the store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn readyz(
    state: web::Data<AppState>,
    store: web::Data<Store>,
) -> Result<HttpResponse, ApiError> {
    let ping = store.ping().await;
    state.metrics.ready.set(i64::from(ping.is_ok()));
    ping?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ready"))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
    )
)]
async fn metrics(
    state: web::Data<AppState>,
    store: web::Data<Store>,
    streams: web::Data<StreamLimiter>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    // Readiness as `/readyz` sees it, so an alert needs no second probe.
    let ready = store.ping().await.is_ok();
    state.metrics.ready.set(i64::from(ready));
    // Row counts are read now, on the read pool; a store that cannot answer
    // leaves the last values (and `/readyz` says why).
    match store.stats().await {
        Ok(stats) => {
            for (table, rows) in [
                ("campaigns", stats.campaigns),
                ("messages", stats.messages),
                ("status_events", stats.events_stored),
                ("unmatched_statuses", stats.unmatched_buffered),
                ("dead_letters", stats.dead_letters),
            ] {
                state
                    .metrics
                    .table_rows
                    .with_label_values(&[table])
                    .set(rows);
            }
        }
        Err(error) => tracing::warn!(%error, "metrics could not count table rows"),
    }
    let open_streams = i64::try_from(streams.open_streams()).unwrap_or(i64::MAX);
    state.metrics.sse_streams.set(open_streams);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}

/// The hub's state at a glance, for the debug page.
#[utoipa::path(
    get,
    path = "/webhooks/health",
    tag = "ops",
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The hub's state; `status` is `degraded` when the store cannot read or write", body = HealthView),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
    )
)]
async fn health(
    state: web::Data<AppState>,
    store: web::Data<Store>,
    subscriptions: web::Data<SnsSubscriptions>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let (ping, stats, recent) = futures_util::join!(
        store.ping(),
        store.stats(),
        store.recent_events(HEALTH_RECENT_EVENTS)
    );
    // The write path decides: a store that reads but cannot commit is down.
    let database = match ping.as_ref().and(stats.as_ref().map(|_| ())) {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(error = %error, "health check: the store cannot read or write");
            "unavailable"
        }
    };
    let body = HealthView {
        status: if database == "ok" { "ok" } else { "degraded" },
        uptime_seconds: state.started_at.elapsed().as_secs(),
        database,
        backend: store.backend().as_str(),
        verification_enabled: state.settings.enable_webhook_verification,
        stats: stats.ok().map(StatsView::from),
        active_campaign_actors: state.hub.active_campaigns().await,
        queue_depth: state.hub.queue_depth().await,
        recent_events: recent.map(event_views).unwrap_or_default(),
        sns_subscriptions: subscriptions.recent(),
        sns_pending_confirmations: subscriptions.pending(),
    };
    Ok(HttpResponse::Ok().json(body))
}

/// What `/webhooks/health` answers.
#[derive(Debug, Serialize, ToSchema)]
struct HealthView {
    /// `ok`, or `degraded` when the store cannot read or write.
    status: &'static str,
    uptime_seconds: u64,
    /// `ok` or `unavailable`.
    database: &'static str,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// Whether webhook signatures are checked.
    verification_enabled: bool,
    /// Row counts; `null` when the store cannot count.
    stats: Option<StatsView>,
    active_campaign_actors: usize,
    /// Writes waiting for the store.
    queue_depth: usize,
    /// The newest stored events.
    recent_events: Vec<RecentEventView>,
    /// What happened to the last SNS (un)subscription messages, newest first.
    sns_subscriptions: Vec<SubscriptionOutcome>,
    /// SNS subscriptions held for the admin to confirm.
    sns_pending_confirmations: Vec<PendingConfirmation>,
}

/// `?limit=N`, at most [`MAX_EVENTS`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// How many, newest first: 100 by default, 1 to 1000 (beyond: the nearest bound).
    limit: Option<u32>,
}

/// The newest stored events (applied and unmatched), newest first.
#[utoipa::path(
    get,
    path = "/webhooks/events",
    tag = "ops",
    params(LimitQuery),
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "Events, newest first", body = Vec<RecentEventView>),
        (status = 400, description = "A query that does not parse", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn events(
    store: web::Data<Store>,
    caller: Caller,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let events = store.recent_events(limit).await?;
    Ok(HttpResponse::Ok().json(event_views(events)))
}

/// `?state=open|replayed|all&limit=N&before=ID`: a page of dead letters,
/// newest first.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// `open` (default): not applied by a replay yet; `replayed`: applied
    /// by a replay; `all`.
    #[serde(default)]
    #[param(inline)]
    state: DeadLetterState,
    /// Page size: 50 by default, 1 to 200 (beyond: the nearest bound).
    limit: Option<u32>,
    /// Only ids below this one: pass the last id of the previous page.
    before: Option<i64>,
}

/// Lists dead letters in `?state=` (open by default), newest first,
/// [`MAX_DEAD_LETTERS`] a page at most, bodies cut to
/// [`LISTED_BODY_BYTES`]; `?before=` the last id of the previous page gives
/// the next.
#[utoipa::path(
    get,
    path = "/webhooks/dead-letters",
    tag = "ops",
    params(PageQuery),
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "A page of dead letters in `state`, newest first, bodies cut to 1 KiB", body = Vec<DeadLetterView>),
        (status = 400, description = "A query that does not parse", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn dead_letters(
    store: web::Data<Store>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_DEAD_LETTERS);
    let letters = store
        .dead_letters(query.state, limit, query.before, LISTED_BODY_BYTES)
        .await?;
    let letters: Vec<DeadLetterView> = letters.into_iter().map(DeadLetterView::from).collect();
    Ok(HttpResponse::Ok().json(letters))
}

/// One dead letter with its whole body.
#[utoipa::path(
    get,
    path = "/webhooks/dead-letters/{id}",
    tag = "ops",
    params(("id" = i64, Path, description = "The dead letter's id", example = 1)),
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The dead letter with its whole body", body = DeadLetterView),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 404, description = "No such dead letter (or an id that is not an integer)", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn dead_letter(
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let letter = store
        .dead_letter(path.into_inner())
        .await?
        .ok_or(ApiError::NotFound("no such dead letter"))?;
    Ok(HttpResponse::Ok().json(DeadLetterView::from(letter)))
}

/// Runs a dead letter through the current parsers and applies what they
/// interpret (see [`crate::webhooks::replay_dead_letter`]); answers with the
/// letter's replay record, its body cut as in listings.
#[utoipa::path(
    post,
    path = "/webhooks/dead-letters/{id}/replay",
    tag = "ops",
    params(("id" = i64, Path, description = "The dead letter's id", example = 1)),
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The letter after its replay (`state`, `replay` with the outcome and counts), body cut to 1 KiB as in listings", body = DeadLetterView),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 404, description = "No such dead letter (or an id that is not an integer)", body = ErrorBody),
        (status = 409, description = "Verification is on and the letter's sender was not verified at receipt (`disabled` or `unknown`): it is not replayed", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn replay_dead_letter(
    state: web::Data<AppState>,
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let mut letter = crate::webhooks::replay_dead_letter(
        &state.hub,
        &store,
        path.into_inner(),
        state.settings.enable_webhook_verification,
    )
    .await?;
    letter
        .body
        .truncate(usize::try_from(LISTED_BODY_BYTES).unwrap_or(usize::MAX));
    Ok(HttpResponse::Ok().json(DeadLetterView::from(letter)))
}

/// Row counts, as `stats` in `/webhooks/health`.
#[derive(Debug, Serialize, ToSchema)]
struct StatsView {
    campaigns: i64,
    messages: i64,
    events_stored: i64,
    unmatched_buffered: i64,
    dead_letters: i64,
}

impl From<StoreStats> for StatsView {
    fn from(stats: StoreStats) -> Self {
        StatsView {
            campaigns: stats.campaigns,
            messages: stats.messages,
            events_stored: stats.events_stored,
            unmatched_buffered: stats.unmatched_buffered,
            dead_letters: stats.dead_letters,
        }
    }
}

/// One stored event, as `/webhooks/events` and `/webhooks/health` list it.
#[derive(Debug, Serialize, ToSchema)]
struct RecentEventView {
    id: i64,
    /// `applied` (in a message's timeline) or `unmatched` (buffered).
    kind: &'static str,
    channel: Channel,
    provider_message_id: String,
    tenant_id: Option<String>,
    campaign_id: Option<String>,
    event: String,
    status: Option<Status>,
    changed: bool,
    #[schema(format = DateTime)]
    provider_at: String,
    #[schema(format = DateTime)]
    received_at: String,
}

impl From<RecentEvent> for RecentEventView {
    fn from(event: RecentEvent) -> Self {
        RecentEventView {
            id: event.id,
            kind: match event.kind {
                RecentKind::Applied => "applied",
                RecentKind::Unmatched => "unmatched",
            },
            channel: event.channel,
            provider_message_id: event.provider_message_id,
            tenant_id: event.tenant_id,
            campaign_id: event.campaign_id,
            event: event.event,
            status: event.status,
            changed: event.changed,
            provider_at: format_ms(event.provider_ts_ms),
            received_at: format_ms(event.received_at_ms),
        }
    }
}

fn event_views(events: Vec<RecentEvent>) -> Vec<RecentEventView> {
    events.into_iter().map(RecentEventView::from).collect()
}

/// A dead letter, as the debug page shows it.
#[derive(Debug, Serialize, ToSchema)]
struct DeadLetterView {
    id: i64,
    channel: Channel,
    reason: String,
    content_type: Option<String>,
    /// The body as text (lossy where it is not UTF-8); in listings, only
    /// its first bytes.
    body: String,
    /// The stored body's whole length.
    body_bytes: i64,
    /// Whether `body` is cut (listings; `GET /webhooks/dead-letters/{id}`
    /// gives the whole body).
    body_truncated: bool,
    #[schema(format = DateTime)]
    received_at: String,
    /// How the sender was verified when the payload arrived.
    verification: VerificationView,
    /// `open` until a replay applied it, then `replayed`.
    #[schema(example = "open")]
    state: &'static str,
    /// The last replay; `null` when it was never replayed.
    replay: Option<ReplayView>,
}

/// How a dead letter's sender was verified at receipt.
#[derive(Debug, Serialize, ToSchema)]
struct VerificationView {
    /// `hmac-sha256`, `sns-signature`, `disabled` or `unknown` (stored
    /// before statushub recorded it).
    #[schema(example = "hmac-sha256")]
    method: &'static str,
    /// The certificate the SNS signature verified under.
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_url: Option<String>,
}

impl From<ReceiptVerification> for VerificationView {
    fn from(verification: ReceiptVerification) -> Self {
        VerificationView {
            method: verification.method(),
            cert_url: verification.detail().map(str::to_owned),
        }
    }
}

/// A dead letter's last replay.
#[derive(Debug, Serialize, ToSchema)]
struct ReplayView {
    #[schema(format = DateTime)]
    replayed_at: String,
    /// `applied`, `partial` or `failed`.
    #[schema(example = "applied")]
    outcome: &'static str,
    /// What stayed uninterpretable.
    error: Option<String>,
    received: i64,
    applied: i64,
    duplicates: i64,
    unmatched: i64,
    /// Replays run so far.
    replays: i64,
}

impl From<ReplayRecord> for ReplayView {
    fn from(replay: ReplayRecord) -> Self {
        ReplayView {
            replayed_at: format_ms(replay.replayed_at_ms),
            outcome: replay.outcome.as_str(),
            error: replay.error,
            received: replay.received,
            applied: replay.applied,
            duplicates: replay.duplicates,
            unmatched: replay.unmatched,
            replays: replay.replays,
        }
    }
}

impl From<StoredDeadLetter> for DeadLetterView {
    fn from(letter: StoredDeadLetter) -> Self {
        let shown = i64::try_from(letter.body.len()).unwrap_or(i64::MAX);
        DeadLetterView {
            id: letter.id,
            channel: letter.channel,
            reason: letter.reason,
            content_type: letter.content_type,
            body: String::from_utf8_lossy(&letter.body).into_owned(),
            body_bytes: letter.body_bytes,
            body_truncated: shown < letter.body_bytes,
            received_at: format_ms(letter.received_at_ms),
            verification: letter.verification.into(),
            state: if letter.open { "open" } else { "replayed" },
            replay: letter.replay.map(ReplayView::from),
        }
    }
}
