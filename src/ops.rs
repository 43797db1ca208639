//! Ops and debug endpoints: `/healthz`, `/readyz` (open), and `/metrics`,
//! `/webhooks/health`, `/webhooks/events`, `/webhooks/dead-letters` and
//! `POST /webhooks/dead-letters/{id}/replay` (admin token). `/` serves the debug page, which holds no data itself: it asks
//! for the admin token and calls the admin endpoints with it.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::clock::format_ms;
use crate::domain::{Channel, Status};
use crate::error::ApiError;
use crate::sse::StreamLimiter;
use crate::state::AppState;
use crate::store::{
    DeadLetterState, ReceiptVerification, RecentEvent, RecentKind, ReplayRecord, Store, StoreStats,
    StoredDeadLetter,
};
use crate::webhooks::ses::SnsSubscriptions;

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

async fn debug_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(include_str!("../static/index.html"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ok")
}

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
    let body = serde_json::json!({
        "status": if database == "ok" { "ok" } else { "degraded" },
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "database": database,
        "backend": store.backend().as_str(),
        "verification_enabled": state.settings.enable_webhook_verification,
        "stats": stats.ok().map(StatsView::from),
        "active_campaign_actors": state.hub.active_campaigns().await,
        "queue_depth": state.hub.queue_depth().await,
        "recent_events": recent.map(event_views).unwrap_or_default(),
        "sns_subscriptions": subscriptions.recent(),
        "sns_pending_confirmations": subscriptions.pending(),
    });
    Ok(HttpResponse::Ok().json(body))
}

/// `?limit=N`, at most [`MAX_EVENTS`].
#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

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
#[derive(Deserialize)]
struct PageQuery {
    /// `open` (default): not applied by a replay yet; `replayed`: applied
    /// by a replay; `all`.
    #[serde(default)]
    state: DeadLetterState,
    limit: Option<u32>,
    /// Only ids below this one: pass the last id of the previous page.
    before: Option<i64>,
}

/// Lists dead letters in `?state=` (open by default), newest first,
/// [`MAX_DEAD_LETTERS`] a page at most, bodies cut to
/// [`LISTED_BODY_BYTES`]; `?before=` the last id of the previous page gives
/// the next.
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
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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
    provider_at: String,
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
#[derive(Debug, Serialize)]
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
    received_at: String,
    /// How the sender was verified when the payload arrived.
    verification: VerificationView,
    /// `open` until a replay applied it, then `replayed`.
    state: &'static str,
    /// The last replay; `null` when it was never replayed.
    replay: Option<ReplayView>,
}

/// How a dead letter's sender was verified at receipt.
#[derive(Debug, Serialize)]
struct VerificationView {
    /// `hmac-sha256`, `sns-signature`, `disabled` or `unknown` (stored
    /// before statushub recorded it).
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
#[derive(Debug, Serialize)]
struct ReplayView {
    replayed_at: String,
    /// `applied`, `partial` or `failed`.
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
