//! Provider-facing endpoints. Each provider module verifies the caller the
//! provider's way, parses the payload into [`crate::domain::StatusUpdate`]s
//! and hands them to the hub; the reply waits for the commit.

pub mod ses;
pub mod whatsapp;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::domain::Channel;
use crate::error::ApiError;
use crate::hub::{Hub, WebhookReceipt};
use crate::store::DeadLetter;

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

/// Applies what could be interpreted, dead-letters the raw body when any part
/// could not be, and answers with the receipt once everything is durable.
pub(crate) async fn apply_and_reply(
    hub: &Hub,
    req: &HttpRequest,
    channel: Channel,
    body: &[u8],
    parsed: crate::domain::Parsed,
) -> Result<HttpResponse, ApiError> {
    let crate::domain::Parsed { updates, problems } = parsed;
    // Apply first: if that fails, the provider retries the whole call and
    // the dead letter is not stored twice.
    let receipt = hub.apply(updates).await?;
    let dead_lettered = if problems.is_empty() {
        0
    } else {
        let reason = problems.join("; ");
        tracing::warn!(channel = %channel, reason = %reason, "keeping uninterpretable payload as a dead letter");
        hub.dead_letter(DeadLetter {
            channel,
            reason,
            content_type: req
                .headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
        })
        .await?;
        1
    };
    let receipt = WebhookReceipt {
        dead_lettered,
        ..receipt
    };
    Ok(HttpResponse::Ok().json(receipt))
}
