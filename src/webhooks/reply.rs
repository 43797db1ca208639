//! The part every provider endpoint ends with: apply what was interpreted,
//! keep what was not, answer once it is durable.

use actix_web::{HttpRequest, HttpResponse};

use crate::clock::{format_ms, now_ms};
use crate::domain::{Channel, Parsed, StatusUpdate};
use crate::error::{ApiError, clip};
use crate::hub::{Hub, IncomingEvent, WebhookReceipt};
use crate::store::{DeadLetter, ReceiptVerification};

/// A parsed provider payload: the updates it carries and what could not be
/// interpreted (`Err` when nothing could).
pub(crate) type ParseResult = Result<Parsed, String>;

/// Applies what could be interpreted, dead-letters the raw body when any
/// part could not be, and answers with the receipt once everything is
/// durable.
///
/// Input nobody vouches for (verification is off) that cannot be
/// interpreted at all is the caller's mistake: 400, nothing kept. A signed
/// payload that cannot be interpreted is the provider's new shape: kept
/// verbatim as a dead letter, with how its signature was verified (so it can
/// be replayed later without a second check), and acknowledged, so nothing
/// is lost.
pub(crate) async fn apply_and_reply(
    hub: &Hub,
    req: &HttpRequest,
    channel: Channel,
    body: &[u8],
    parsed: ParseResult,
    verification: ReceiptVerification,
) -> Result<HttpResponse, ApiError> {
    let Parsed { updates, problems } = match parsed {
        Ok(parsed) => parsed,
        Err(problem) if !verification.signed() => {
            return Err(ApiError::BadRequest(clip(&problem).into_owned()));
        }
        Err(problem) => Parsed {
            updates: Vec::new(),
            problems: vec![problem],
        },
    };
    // Apply first: if that fails, the provider retries the whole call and
    // the dead letter is not stored twice.
    let receipt = apply_updates(hub, updates).await?;
    let dead_lettered = if problems.is_empty() {
        0
    } else {
        // Parser errors quote the input: keep the reason short, the body
        // is kept whole anyway.
        let reason = clip(&problems.join("; ")).into_owned();
        tracing::warn!(channel = %channel, reason = %reason, "keeping uninterpretable payload as a dead letter");
        hub.dead_letter(DeadLetter {
            channel,
            reason: reason.clone(),
            content_type: req
                .headers()
                .get(actix_web::http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            body: body.to_vec(),
            verification,
        })
        .await?;
        let broadcaster = hub.broadcaster();
        if broadcaster.has_incoming_subscribers() {
            broadcaster.publish_incoming(IncomingEvent {
                received_at: format_ms(now_ms()),
                channel: channel.as_str().to_owned(),
                provider_message_id: None,
                event: None,
                status: None,
                outcome: "dead_letter",
                reason: Some(reason),
            });
        }
        1
    };
    let receipt = WebhookReceipt {
        dead_lettered,
        ..receipt
    };
    Ok(HttpResponse::Ok().json(receipt))
}

/// Applies interpreted updates through the hub (idempotently: a
/// notification recorded before is a duplicate) and shows each on the debug
/// tail; returns the receipt once they are durable. Webhooks and dead-letter
/// replays both go this way.
pub(crate) async fn apply_updates(
    hub: &Hub,
    updates: Vec<StatusUpdate>,
) -> Result<WebhookReceipt, ApiError> {
    let (receipt, settled) = hub.apply(updates).await?;
    let broadcaster = hub.broadcaster();
    // Only when someone watches the debug tail is it worth building events.
    if broadcaster.has_incoming_subscribers() {
        let received_at = format_ms(now_ms());
        for (update, settlement) in settled {
            broadcaster.publish_incoming(IncomingEvent {
                received_at: received_at.clone(),
                channel: update.channel.as_str().to_owned(),
                provider_message_id: Some(update.provider_message_id.clone()),
                event: Some(update.event.clone()),
                status: update.status.map(|status| status.as_str().to_owned()),
                outcome: settlement.as_str(),
                reason: None,
            });
        }
    }
    Ok(receipt)
}
