//! The API for senders and dashboards under `/api/v1` (bearer tokens).

pub(crate) mod campaigns;
mod listing;
mod messages;

use actix_web::web;
use utoipa::OpenApi;

pub use messages::parse_registrations;

/// The OpenAPI description of the routes [`configure`] registers: a route
/// added there is annotated with `#[utoipa::path]` and listed here.
#[derive(Debug, OpenApi)]
#[openapi(paths(
    messages::register,
    messages::show,
    campaigns::metrics,
    campaigns::timeseries,
    listing::list_campaigns,
    listing::list_messages
))]
pub struct Doc;

/// Registers the `/api/v1` routes; `body_limit` bounds registration bodies.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.service(
        web::resource("/api/v1/messages")
            .app_data(web::PayloadConfig::new(body_limit))
            .route(web::post().to(messages::register)),
    )
    .route(
        "/api/v1/messages/{channel}/{provider_message_id}",
        web::get().to(messages::show),
    )
    .route(
        "/api/v1/campaigns/{campaign_id}/metrics",
        web::get().to(campaigns::metrics),
    )
    .route("/api/v1/campaigns", web::get().to(listing::list_campaigns))
    .route(
        "/api/v1/campaigns/{campaign_id}/messages",
        web::get().to(listing::list_messages),
    )
    .route(
        "/api/v1/campaigns/{campaign_id}/timeseries",
        web::get().to(campaigns::timeseries),
    );
}
