//! Ops and debug endpoints: `/healthz`, `/readyz` (open), and `/metrics`,
//! `/webhooks/health`, `/webhooks/events`, `/webhooks/dead-letters` (admin
//! token). `/` serves the debug page, which holds no data itself: it asks
//! for the admin token and calls the admin endpoints with it.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

/// Most events `/webhooks/events` returns.
const MAX_EVENTS: u32 = 1000;

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
        .route("/webhooks/dead-letters", web::get().to(dead_letters));
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

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.hub.store().ping().await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("ready"))
}

async fn metrics(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}

async fn health(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let store = state.hub.store();
    let (stats, recent) =
        futures_util::join!(store.stats(), store.recent_events(HEALTH_RECENT_EVENTS));
    let database = match &stats {
        Ok(_) => "ok".to_owned(),
        Err(error) => {
            tracing::warn!(error = %error, "health check could not read the store");
            "unavailable".to_owned()
        }
    };
    let body = serde_json::json!({
        "status": if stats.is_ok() { "ok" } else { "degraded" },
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "database": database,
        "backend": "sqlite",
        "verification_enabled": state.settings.enable_webhook_verification,
        "stats": stats.ok(),
        "active_campaign_actors": state.hub.active_campaigns().await,
        "queue_depth": state.hub.queue_depth().await,
        "recent_events": recent.unwrap_or_default(),
        "sns_subscriptions": state.sns_subscriptions.recent(),
    });
    Ok(HttpResponse::Ok().json(body))
}

/// `?limit=N`, at most [`MAX_EVENTS`].
#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

async fn events(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_EVENTS);
    let events = state.hub.store().recent_events(limit).await?;
    Ok(HttpResponse::Ok().json(events))
}

async fn dead_letters(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_EVENTS);
    let letters = state.hub.store().dead_letters(limit).await?;
    Ok(HttpResponse::Ok().json(letters))
}
