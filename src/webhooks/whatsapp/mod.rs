//! `GET` and `POST /webhooks/whatsapp`: Meta's subscription check and status
//! webhooks.

mod payload;
pub mod signature;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use utoipa::IntoParams;

pub use payload::{envelope, parse};

use crate::domain::Channel;
use crate::error::{ApiError, ErrorBody};
use crate::hub::WebhookReceipt;
use crate::state::AppState;
use crate::store::ReceiptVerification;

/// Query of Meta's verification request.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// `subscribe`.
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    /// The verify token configured on both sides (`WHATSAPP_VERIFY_TOKEN`).
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    /// Echoed back as the body when the token matches.
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

impl std::fmt::Debug for VerifyQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyQuery")
            .field("mode", &self.mode)
            .field("verify_token", &self.verify_token.as_ref().map(|_| "***"))
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// Answers Meta's `GET` verification: the challenge as text when the mode is
/// `subscribe` and the token matches (compared in constant time), else 403.
#[utoipa::path(
    get,
    path = "/webhooks/whatsapp",
    tag = "webhooks",
    params(VerifyQuery),
    responses(
        (status = 200, description = "The token matches: `hub.challenge`, verbatim", body = String, content_type = "text/plain"),
        (status = 400, description = "A query that does not parse", body = ErrorBody),
        (status = 403, description = "Wrong mode, token or no challenge", body = ErrorBody),
    )
)]
pub async fn verify_subscription(
    state: web::Data<AppState>,
    query: web::Query<VerifyQuery>,
) -> HttpResponse {
    let expected = state
        .settings
        .secrets
        .whatsapp_verify_token
        .expose_secret()
        .as_bytes();
    let VerifyQuery {
        mode,
        verify_token,
        challenge,
    } = query.into_inner();
    // An empty token never matches, whatever the configuration says.
    let token_matches = verify_token.is_some_and(|token| {
        !token.is_empty() && !expected.is_empty() && bool::from(token.as_bytes().ct_eq(expected))
    });
    match (mode.as_deref(), challenge) {
        (Some("subscribe"), Some(challenge)) if token_matches => HttpResponse::Ok()
            .content_type(ContentType::plaintext())
            .body(challenge),
        _ => HttpResponse::Forbidden().json(serde_json::json!({ "error": "verification failed" })),
    }
}

/// Receives a status webhook: 401 unless the signature matches the raw body,
/// then applies what it carries and answers once it is durable.
#[utoipa::path(
    post,
    path = "/webhooks/whatsapp",
    tag = "webhooks",
    request_body(content = payload::Envelope, description = "Meta's webhook, signed over its raw bytes"),
    security(("whatsapp_signature" = [])),
    responses(
        (status = 200, description = "Every status is durable (or kept as a dead letter)", body = WebhookReceipt),
        (status = 400, description = "Not a WhatsApp payload, and no signature vouches for it (verification disabled)", body = ErrorBody),
        (status = 401, description = "Missing or wrong `X-Hub-Signature-256`: nothing stored", body = ErrorBody),
        (status = 408, description = crate::openapi::TIMEOUT, body = ErrorBody),
        (status = 413, description = crate::openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = crate::openapi::COMPRESSED, body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let verification = if state.settings.enable_webhook_verification {
        let secret = state
            .settings
            .secrets
            .whatsapp_webhook_secret
            .expose_secret()
            .as_bytes();
        let header = req
            .headers()
            .get("x-hub-signature-256")
            .map(|value| value.as_bytes());
        // An empty key signs nothing (start-up refuses one; this holds anyway).
        if secret.is_empty() {
            return Err(ApiError::Unauthorized("invalid signature"));
        }
        signature::verify(secret, &body, header).map_err(|error| {
            // warn: a wrong app secret on either side stops every status.
            tracing::warn!(error = %error, "refused whatsapp webhook: signature does not verify");
            state
                .metrics
                .webhook_signature_failures
                .with_label_values(&["whatsapp"])
                .inc();
            ApiError::Unauthorized("invalid signature")
        })?;
        ReceiptVerification::HmacSha256
    } else {
        ReceiptVerification::Disabled
    };
    super::reply::apply_and_reply(
        &state.hub,
        &req,
        Channel::Whatsapp,
        &body,
        parse(&body),
        verification,
    )
    .await
}
