//! `POST /webhooks/email`: AWS SES events delivered by SNS over HTTP(S).
//!
//! A call goes through, in order:
//!
//! 1. the optional shared secret (`SES_WEBHOOK_SECRET`, as the basic-auth
//!    password or `?token=`, compared in constant time): 401 when wrong;
//! 2. the envelope: JSON of any Content-Type, a known `Type` that the
//!    `x-amz-sns-message-type` header repeats: 400 otherwise;
//! 3. the topic allow-list (`SNS_TOPIC_ARNS`): 403 for other topics, before
//!    any certificate is fetched or subscription confirmed;
//! 4. the SNS signature (unless verification is disabled): 401 when it does
//!    not verify, 503 when the signing certificate cannot be obtained now
//!    (SNS retries 5xx answers);
//! 5. by type: a `Notification` carries an SES event, applied and answered
//!    once durable (a signed message statushub cannot interpret is kept as a
//!    dead letter and acknowledged; SES's set-up notices are acknowledged
//!    only); a `SubscriptionConfirmation` for a topic in `SNS_TOPIC_ARNS` is
//!    confirmed by a `GET` of its host-validated `SubscribeURL` (200 once
//!    confirmed, 502 when that failed, so SNS retries), and with the list
//!    empty it is held for the admin to confirm (see `confirm.rs`); an
//!    `UnsubscribeConfirmation` is logged.

mod confirm;
pub mod event;
pub mod sns;
pub mod sns_verify;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;

pub use confirm::{PendingConfirmation, SnsSubscriptions, SubscriptionOutcome};
pub use event::{SesError, parse_ses_message};
pub use sns::{SnsEnvelope, SnsError, SnsMessageType};
pub use sns_verify::SnsVerifier;

use crate::domain::{Channel, Parsed};
use crate::error::{ApiError, ErrorBody};
use crate::hub::WebhookReceipt;
use crate::state::AppState;
use crate::store::ReceiptVerification;

/// The header SNS sets to the message type.
const MESSAGE_TYPE_HEADER: &str = "x-amz-sns-message-type";

/// Receives an SNS message; see the module documentation for the order of
/// checks and the answers.
#[utoipa::path(
    post,
    path = "/webhooks/email",
    tag = "webhooks",
    request_body(content = SnsEnvelope, description = "An SNS envelope (SNS sends it as `text/plain`; any Content-Type is read as JSON)"),
    params(
        ("x-amz-sns-message-type" = inline(SnsMessageType), Header, description = "Repeats the envelope's `Type`"),
    ),
    security((), ("ses_basic" = []), ("ses_token" = [])),
    responses(
        (status = 200, description = "A notification is durable (or kept as a dead letter), a set-up notice or unsubscription acknowledged, or a subscription confirmed or held for the admin", body = SnsReply),
        (status = 400, description = "Not an SNS envelope, a `Type` the header does not repeat, an untrusted `SubscribeURL`, or an SES event that does not parse and no signature vouches for", body = ErrorBody),
        (status = 401, description = "Wrong or missing shared secret (when `SES_WEBHOOK_SECRET` is set), or a signature that does not verify", body = ErrorBody),
        (status = 403, description = "A topic not in `SNS_TOPIC_ARNS`", body = ErrorBody),
        (status = 408, description = crate::openapi::TIMEOUT, body = ErrorBody),
        (status = 413, description = crate::openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = crate::openapi::COMPRESSED, body = ErrorBody),
        (status = 502, description = "SNS refused the subscription confirmation: SNS retries", body = SubscriptionOutcome),
        (status = 503, description = "The store is unavailable, or the signing certificate cannot be obtained now", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
    verifier: web::Data<SnsVerifier>,
    subscriptions: web::Data<SnsSubscriptions>,
) -> Result<HttpResponse, ApiError> {
    let secret = state.settings.ses_webhook_secret.as_ref();
    if secret.is_some_and(|secret| !shared_secret_matches(&req, secret.expose_secret().as_bytes()))
    {
        tracing::debug!("refused sns message: missing or wrong shared secret");
        return Err(ApiError::Unauthorized("invalid credentials"));
    }

    let envelope = SnsEnvelope::parse(&body).map_err(|error| {
        tracing::debug!(error = %error, "refused sns message");
        ApiError::BadRequest(error.to_string())
    })?;
    let message_type = envelope
        .message_type()
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let header_type = req
        .headers()
        .get(MESSAGE_TYPE_HEADER)
        .and_then(|value| value.to_str().ok());
    if header_type != Some(message_type.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "{MESSAGE_TYPE_HEADER} header must be {}",
            message_type.as_str()
        )));
    }

    let topics = &state.settings.sns_topic_arns;
    if !topics.is_empty() && !topics.contains(&envelope.topic_arn) {
        tracing::warn!(
            topic_arn = %SnsError::quote(&envelope.topic_arn),
            message_type = message_type.as_str(),
            "refused sns message from a topic not in SNS_TOPIC_ARNS"
        );
        return Err(ApiError::Forbidden("topic not accepted"));
    }

    let verification = if state.settings.enable_webhook_verification {
        verifier.verify(&envelope).await.map_err(|error| {
            if let SnsError::CertificateUnavailable(_) = error {
                tracing::warn!(error = %error, "cannot verify sns message now");
                ApiError::Unavailable
            } else {
                tracing::warn!(error = %error, "refused sns message: signature does not verify");
                state
                    .metrics
                    .webhook_signature_failures
                    .with_label_values(&["email"])
                    .inc();
                ApiError::Unauthorized("invalid signature")
            }
        })?;
        ReceiptVerification::SnsSignature {
            cert_url: envelope.signing_cert_url.clone(),
        }
    } else {
        ReceiptVerification::Disabled
    };

    match message_type {
        SnsMessageType::Notification => {
            notification(&req, &body, &state, &envelope, verification).await
        }
        SnsMessageType::SubscriptionConfirmation => {
            subscription_confirmation(&state, &subscriptions, &envelope).await
        }
        SnsMessageType::UnsubscribeConfirmation => {
            subscriptions.unsubscribed(&envelope);
            Ok(
                HttpResponse::Ok().json(SnsReply::Acknowledged(Acknowledged {
                    acknowledged: SnsMessageType::UnsubscribeConfirmation.as_str(),
                })),
            )
        }
    }
}

/// Applies the SES event of a notification and answers once it is durable.
async fn notification(
    req: &HttpRequest,
    body: &[u8],
    state: &AppState,
    envelope: &SnsEnvelope,
    verification: ReceiptVerification,
) -> Result<HttpResponse, ApiError> {
    let Some(parsed) = parse_notification(envelope) else {
        return Ok(HttpResponse::Ok().json(SnsReply::Receipt(WebhookReceipt::default())));
    };
    super::reply::apply_and_reply(&state.hub, req, Channel::Email, body, parsed, verification).await
}

/// Interprets the SES event of a notification; `None` for SES's notices
/// about its own set-up, which carry no status (acknowledged only).
pub(crate) fn parse_notification(envelope: &SnsEnvelope) -> Option<super::reply::ParseResult> {
    match parse_ses_message(&envelope.message, &envelope.message_id) {
        Ok(update) => Some(Ok(Parsed {
            updates: vec![update],
            problems: Vec::new(),
        })),
        Err(error) => {
            if let Some(notice) = ses_setup_notice(&envelope.message) {
                tracing::info!(topic_arn = %envelope.topic_arn, notice, "ses set-up notice acknowledged");
                return None;
            }
            Some(Err(error.to_string()))
        }
    }
}

/// Confirms a subscription to a topic listed in `SNS_TOPIC_ARNS`: 200 once
/// SNS accepted the `GET` of `SubscribeURL`, 502 when it did not (SNS
/// retries the message), 400 when the URL is not an SNS URL (nothing is
/// fetched). With the list empty, the confirmation is held for the admin
/// (200, nothing fetched).
async fn subscription_confirmation(
    state: &AppState,
    subscriptions: &SnsSubscriptions,
    envelope: &SnsEnvelope,
) -> Result<HttpResponse, ApiError> {
    let subscribe_url = envelope
        .subscribe_url
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest(SnsError::MissingField("SubscribeURL").to_string()))?;
    sns_verify::validate_subscribe_url(subscribe_url).map_err(|error| {
        tracing::warn!(topic_arn = %envelope.topic_arn, error = %error, "sns subscription not confirmed");
        ApiError::BadRequest(error.to_string())
    })?;
    if state.settings.sns_topic_arns.is_empty() {
        // No topic is trusted by configuration: the admin decides.
        let held = subscriptions.hold(envelope, subscribe_url);
        return Ok(HttpResponse::Ok().json(SnsReply::Held(Held {
            held: true,
            pending_id: held.id,
            reason: "SNS_TOPIC_ARNS is empty: the admin must confirm this subscription",
        })));
    }
    let outcome = subscriptions.confirm(envelope, subscribe_url).await;
    if outcome.error.is_none() {
        Ok(HttpResponse::Ok().json(SnsReply::Confirmed(outcome)))
    } else {
        Ok(HttpResponse::BadGateway().json(outcome))
    }
}

/// `POST /webhooks/sns/confirmations/{id}` (admin): confirms a held
/// subscription. 200 with the outcome once SNS accepted it, 502 when the
/// confirmation failed (it stays held), 404 for no such held confirmation.
#[utoipa::path(
    post,
    path = "/webhooks/sns/confirmations/{id}",
    tag = "ops",
    params(("id" = u64, Path, description = "`pending_id` of the held confirmation (see `/webhooks/health`)")),
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "SNS accepted the confirmation", body = SubscriptionOutcome),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 404, description = "No such held confirmation", body = ErrorBody),
        (status = 502, description = "SNS refused: the confirmation stays held", body = SubscriptionOutcome),
    )
)]
pub async fn confirm_held(
    subscriptions: web::Data<SnsSubscriptions>,
    caller: crate::auth::Caller,
    path: web::Path<u64>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let outcome = subscriptions
        .confirm_held(path.into_inner())
        .await
        .ok_or(ApiError::NotFound("no such held confirmation"))?;
    let mut response = if outcome.error.is_none() {
        HttpResponse::Ok()
    } else {
        HttpResponse::BadGateway()
    };
    Ok(response.json(outcome))
}

/// Tells SES's notices about its own set-up apart from events: the plain text
/// SES publishes when an event destination is added, and the
/// `AmazonSnsSubscriptionSucceeded` notification of identity notifications.
/// Returns a name for the log.
fn ses_setup_notice(message: &str) -> Option<&'static str> {
    if message.starts_with("Successfully validated SNS topic for Amazon SES") {
        return Some("event destination validated");
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Notice {
        notification_type: Option<String>,
    }
    let notice: Notice = serde_json::from_str(message).ok()?;
    (notice.notification_type.as_deref() == Some("AmazonSnsSubscriptionSucceeded"))
        .then_some("identity notifications subscribed")
}

/// The answer to an `UnsubscribeConfirmation`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Acknowledged {
    /// `UnsubscribeConfirmation`.
    acknowledged: &'static str,
}

/// The answer to a `SubscriptionConfirmation` held for the admin.
#[derive(Debug, Serialize, ToSchema)]
pub struct Held {
    /// Always `true`.
    held: bool,
    /// What `POST /webhooks/sns/confirmations/{id}` confirms it by.
    pending_id: u64,
    /// Why it is held.
    reason: &'static str,
}

/// The answers of `POST /webhooks/email` with status 200.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SnsReply {
    /// A notification: what became of its status.
    Receipt(WebhookReceipt),
    /// A confirmed subscription.
    Confirmed(SubscriptionOutcome),
    /// A subscription held for the admin.
    Held(Held),
    /// An unsubscription.
    Acknowledged(Acknowledged),
}

/// `?token=` of the endpoint URL.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Tells whether the request carries `secret` as its basic-auth password (any
/// user name) or as `?token=`, compared in constant time.
fn shared_secret_matches(req: &HttpRequest, secret: &[u8]) -> bool {
    // An empty secret or an empty candidate never matches.
    let matches = |candidate: &[u8]| {
        !candidate.is_empty() && !secret.is_empty() && bool::from(candidate.ct_eq(secret))
    };
    let basic_password = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, credentials) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(credentials)
        })
        .and_then(|credentials| STANDARD.decode(credentials.trim()).ok())
        .and_then(|decoded| {
            let colon = decoded.iter().position(|&b| b == b':')?;
            Some(decoded[colon + 1..].to_vec())
        });
    let token = web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.into_inner().token);
    // Both are compared, so the time taken does not tell which one was sent.
    let by_password = basic_password.is_some_and(|password| matches(&password));
    let by_token = token.is_some_and(|token| matches(token.as_bytes()));
    by_password | by_token
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn setup_notices_are_recognised() {
        assert!(
            ses_setup_notice("Successfully validated SNS topic for Amazon SES event publishing.")
                .is_some()
        );
        assert!(
            ses_setup_notice(
                r#"{"notificationType":"AmazonSnsSubscriptionSucceeded","message":"You have successfully subscribed your Amazon SNS topic 'arn:aws:sns:us-east-1:1:t' to receive 'Bounce' notifications from Amazon SES for identity 'example.com'."}"#
            )
            .is_some()
        );
        for other in [
            "Hello world",
            r#"{"notificationType":"Bounce"}"#,
            r#"{"eventType":"AmazonSnsSubscriptionSucceeded"}"#,
            "",
        ] {
            assert_eq!(ses_setup_notice(other), None, "{other}");
        }
    }

    #[test]
    fn shared_secret_is_read_from_basic_auth_or_token() {
        let basic = |credentials: &str| {
            TestRequest::default()
                .insert_header((
                    header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(credentials)),
                ))
                .to_http_request()
        };
        assert!(shared_secret_matches(&basic("sns:s3cret"), b"s3cret"));
        assert!(shared_secret_matches(&basic(":s3cret"), b"s3cret"));
        assert!(shared_secret_matches(
            &basic("user:with:s3cret"),
            b"with:s3cret"
        ));
        assert!(!shared_secret_matches(&basic("s3cret:wrong"), b"s3cret"));
        assert!(!shared_secret_matches(&basic("s3cret"), b"s3cret"));
        let token = |query: &str| {
            TestRequest::with_uri(&format!("/webhooks/email?{query}")).to_http_request()
        };
        assert!(shared_secret_matches(&token("token=s3cret"), b"s3cret"));
        assert!(shared_secret_matches(
            &token("a=1&token=s%33cret"),
            b"s3cret"
        ));
        assert!(!shared_secret_matches(&token("token=s3cre"), b"s3cret"));
        assert!(!shared_secret_matches(&token("token="), b"s3cret"));
        assert!(!shared_secret_matches(&token("tok=s3cret"), b"s3cret"));
        let bearer = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer s3cret"))
            .to_http_request();
        assert!(!shared_secret_matches(&bearer, b"s3cret"));
    }
}
