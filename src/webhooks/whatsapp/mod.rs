//! `GET` and `POST /webhooks/whatsapp`: Meta's subscription check and status
//! webhooks.

mod payload;
pub mod signature;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

pub use payload::{envelope, parse};

use crate::domain::Channel;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::ReceiptVerification;

/// Query of Meta's verification request.
#[derive(Deserialize)]
pub struct VerifyQuery {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
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
