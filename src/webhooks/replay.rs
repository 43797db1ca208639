//! Dead-letter replay: a stored payload run again through the current
//! parsers, after an upgrade taught them its shape
//! (`POST /webhooks/dead-letters/{id}/replay`, `statushub
//! replay-dead-letters`).
//!
//! - No second signature check: the letter records how its sender was
//!   verified at receipt. One stored while verification was disabled (or
//!   before statushub recorded it) is replayed only while verification is
//!   disabled now too: the hub then takes unsigned input anyway, so the
//!   replay grants nothing a plain webhook would not.
//! - The statuses go through [`Hub::apply`], the path every webhook takes:
//!   the campaign actors stay the only writers of their counters, and a
//!   notification recorded before is a duplicate, so replaying twice
//!   changes nothing the second time.
//! - The outcome is recorded on the letter afterwards, in a commit of its
//!   own: `applied` (everything interpreted; the letter leaves the open
//!   list), `partial` (some statuses applied, some parts still
//!   uninterpretable) or `failed` (nothing interpreted); those two stay
//!   open. Should the process stop between the two commits, the letter stays
//!   open and a replay again is harmless.

use crate::domain::{Channel, Parsed};
use crate::error::{ApiError, clip};
use crate::hub::Hub;
use crate::store::{RecordReplay, ReplayOutcome, Store, StoredDeadLetter};

use super::reply::{ParseResult, apply_updates};
use super::ses::{SnsEnvelope, SnsMessageType};

/// Replays dead letter `id` and returns it as stored afterwards, with its
/// replay record. 404 for no such letter; 409 when it was not verified at
/// receipt and verification is enabled now; 503 when the store cannot
/// commit (nothing recorded; replay again later).
pub async fn replay_dead_letter(
    hub: &Hub,
    store: &Store,
    id: i64,
    verification_enabled: bool,
) -> Result<StoredDeadLetter, ApiError> {
    let letter = store
        .dead_letter(id)
        .await?
        .ok_or(ApiError::NotFound("no such dead letter"))?;
    if verification_enabled && !letter.verification.signed() {
        hub.count_refused_replay();
        return Err(ApiError::Conflict(
            "this dead letter was stored without a verified signature; it can be replayed only while webhook verification is disabled",
        ));
    }
    let Parsed { updates, problems } = match reparse(letter.channel, &letter.body) {
        Ok(parsed) => parsed,
        Err(problem) => Parsed {
            updates: Vec::new(),
            problems: vec![problem],
        },
    };
    let receipt = apply_updates(hub, updates).await?;
    let outcome = if problems.is_empty() {
        ReplayOutcome::Applied
    } else if receipt.received > 0 {
        ReplayOutcome::Partial
    } else {
        ReplayOutcome::Failed
    };
    let error = (!problems.is_empty()).then(|| clip(&problems.join("; ")).into_owned());
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    tracing::info!(
        dead_letter = id,
        channel = %letter.channel,
        outcome = outcome.as_str(),
        applied = receipt.applied,
        duplicates = receipt.duplicates,
        unmatched = receipt.unmatched,
        "dead letter replayed"
    );
    let found = hub
        .record_replay(RecordReplay {
            id,
            outcome,
            error,
            received: count(receipt.received),
            applied: count(receipt.applied),
            duplicates: count(receipt.duplicates),
            unmatched: count(receipt.unmatched),
        })
        .await?;
    // Retention may have removed the letter meanwhile.
    let gone = || ApiError::NotFound("no such dead letter");
    if !found {
        return Err(gone());
    }
    store.dead_letter(id).await?.ok_or_else(gone)
}

/// Runs a stored body through the channel's current parser, as its webhook
/// endpoint would after verification.
pub(crate) fn reparse(channel: Channel, body: &[u8]) -> ParseResult {
    match channel {
        Channel::Whatsapp => super::whatsapp::parse(body),
        Channel::Email => {
            let envelope = SnsEnvelope::parse(body).map_err(|error| error.to_string())?;
            match envelope.message_type() {
                Ok(SnsMessageType::Notification) => {}
                Ok(other) => {
                    return Err(format!("an sns {} carries no status", other.as_str()));
                }
                Err(error) => return Err(error.to_string()),
            }
            // An SES set-up notice carries no status: nothing to apply.
            super::ses::parse_notification(&envelope).unwrap_or_else(|| Ok(Parsed::default()))
        }
    }
}
