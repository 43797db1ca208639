//! Provider-facing endpoints. Each provider module verifies the caller the
//! provider's way, parses the payload into [`crate::domain::StatusUpdate`]s
//! and hands them to the hub; the reply waits for the commit.

mod replay;
mod reply;
pub mod ses;
pub mod whatsapp;

use actix_web::web;
use utoipa::OpenApi;

/// The OpenAPI description of the routes [`configure`] registers: a route
/// added there is annotated with `#[utoipa::path]` and listed here.
#[derive(Debug, OpenApi)]
#[openapi(paths(
    whatsapp::verify_subscription,
    whatsapp::receive,
    ses::receive,
    ses::confirm_held
))]
pub struct Doc;

pub use replay::replay_dead_letter;

/// Registers `/webhooks/whatsapp`, `/webhooks/email` (and later providers) on `cfg`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/whatsapp")
            .route(web::get().to(whatsapp::verify_subscription))
            .route(web::post().to(whatsapp::receive)),
    );
    cfg.route("/webhooks/email", web::post().to(ses::receive))
        .route(
            "/webhooks/sns/confirmations/{id}",
            web::post().to(ses::confirm_held),
        );
}
