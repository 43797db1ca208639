//! Mapping PostgreSQL rows to the store's types.

use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::domain::analytics::Pricing;
use crate::domain::{Channel, CurrentStatus, Failure, Status, StatusSet, StatusUpdate, Tally};
use crate::store::batch::{CounterRow, StatusChange};
use crate::store::types::{
    ReceiptVerification, ReplayOutcome, ReplayRecord, StoreError, StoredDeadLetter, StoredEvent,
};

/// Parses a stored channel name.
pub(super) fn parse_channel(text: &str) -> Result<Channel, StoreError> {
    Channel::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown channel {text}")))
}

/// Reads a channel stored as its wire name; any other text is corruption.
pub(super) fn channel_of(row: &PgRow, column: &str) -> Result<Channel, StoreError> {
    let channel: String = row.try_get(column)?;
    parse_channel(&channel)
}

/// Reads a current status stored as its wire name; any other text is
/// corruption.
pub(super) fn current_status_of(row: &PgRow, column: &str) -> Result<CurrentStatus, StoreError> {
    let status: String = row.try_get(column)?;
    CurrentStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status}")))
}

/// Reads a nullable status stored as its wire name; any other text is
/// corruption.
pub(super) fn status_of(row: &PgRow, column: &str) -> Result<Option<Status>, StoreError> {
    let status: Option<String> = row.try_get(column)?;
    status
        .map(|status| {
            Status::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status}")))
        })
        .transpose()
}

/// A change as followers and replays read it: the event row joined with its
/// message (`channel`, `provider_message_id`).
pub(super) fn status_change(row: &PgRow) -> Result<StatusChange, StoreError> {
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("message_status")?;
    Ok(StatusChange {
        event_id: row.try_get("id")?,
        xact: row.try_get("xact")?,
        campaign_pk: row.try_get("campaign_pk")?,
        version: row.try_get("campaign_version")?,
        channel: parse_channel(&channel)?,
        provider_message_id: row.try_get("provider_message_id")?,
        event: row.try_get("event")?,
        status: CurrentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status}")))?,
        provider_ts_ms: row.try_get("provider_ts")?,
    })
}

pub(super) fn status_set(row: &PgRow) -> Result<StatusSet, StoreError> {
    let seen: i64 = row.try_get("seen")?;
    let mask = u8::try_from(seen)
        .map_err(|_| StoreError::Corrupt(format!("status mask {seen} out of range")))?;
    let first = [
        row.try_get("sent_at")?,
        row.try_get("delivered_at")?,
        row.try_get("read_at")?,
        row.try_get("clicked_at")?,
        row.try_get("complained_at")?,
        row.try_get("failed_at")?,
    ];
    Ok(StatusSet::from_parts(mask, first))
}

pub(super) fn failure(row: &PgRow) -> Result<Option<Failure>, StoreError> {
    let code: Option<String> = row.try_get("error_code")?;
    let title: Option<String> = row.try_get("error_title")?;
    Ok(code.map(|code| Failure {
        code,
        title: title.unwrap_or_default(),
    }))
}

/// Reads a message's kept WhatsApp pricing.
pub(super) fn pricing(row: &PgRow) -> Result<Option<Pricing>, StoreError> {
    let category: Option<String> = row.try_get("pricing_category")?;
    let billable: Option<bool> = row.try_get("pricing_billable")?;
    let at_ms: Option<i64> = row.try_get("pricing_at")?;
    Ok(match (category, billable, at_ms) {
        (Some(category), Some(billable), Some(at_ms)) => Some(Pricing {
            category,
            billable,
            at_ms,
        }),
        _ => None,
    })
}

pub(super) fn buffered_update(row: &PgRow) -> Result<StatusUpdate, StoreError> {
    let json: String = row.try_get("status_update")?;
    serde_json::from_str(&json)
        .map_err(|error| StoreError::Corrupt(format!("buffered update: {error}")))
}

/// A counters row (`campaign_counters`, or an outbox row of
/// `campaign_changes`, which has the same counter columns).
pub(super) fn counter_row(row: &PgRow) -> Result<CounterRow, StoreError> {
    Ok(CounterRow {
        campaign_pk: row.try_get("campaign_pk")?,
        version: row.try_get("version")?,
        tally: Tally {
            total: row.try_get("total")?,
            sent: row.try_get("sent")?,
            delivered: row.try_get("delivered")?,
            read: row.try_get("read")?,
            clicked: row.try_get("clicked")?,
            complained: row.try_get("complained")?,
            by_status: [
                row.try_get("now_pending")?,
                row.try_get("now_sent")?,
                row.try_get("now_delivered")?,
                row.try_get("now_read")?,
                row.try_get("now_failed")?,
            ],
        },
        updated_at_ms: row.try_get("updated_at")?,
    })
}

/// One `status_events` row of a message's timeline. Details that are not
/// JSON read as `Null`.
pub(super) fn stored_event(row: &PgRow) -> Result<StoredEvent, StoreError> {
    let details: Option<String> = row.try_get("details")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        event: row.try_get("event")?,
        status: status_of(row, "status")?,
        changed: row.try_get("changed")?,
        provider_ts_ms: row.try_get("provider_ts")?,
        received_at_ms: row.try_get("received_at")?,
        details: details
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

/// The columns [`stored_dead_letter`] reads, but `body` (whole or cut).
pub(super) const DEAD_LETTER_COLUMNS: &str =
    "id, channel, reason, content_type, octet_length(body)::int8 AS body_bytes, received_at,
     verification, verification_detail, is_open, replays, replayed_at, replay_outcome,
     replay_error, replay_received, replay_applied, replay_duplicates, replay_unmatched";

pub(super) fn stored_dead_letter(row: &PgRow) -> Result<StoredDeadLetter, StoreError> {
    let verification: Option<String> = row.try_get("verification")?;
    let outcome: Option<String> = row.try_get("replay_outcome")?;
    let replay = match (outcome, row.try_get::<Option<i64>, _>("replayed_at")?) {
        (Some(outcome), Some(replayed_at_ms)) => Some(ReplayRecord {
            replayed_at_ms,
            outcome: ReplayOutcome::parse(&outcome)?,
            error: row.try_get("replay_error")?,
            received: row
                .try_get::<Option<i64>, _>("replay_received")?
                .unwrap_or(0),
            applied: row
                .try_get::<Option<i64>, _>("replay_applied")?
                .unwrap_or(0),
            duplicates: row
                .try_get::<Option<i64>, _>("replay_duplicates")?
                .unwrap_or(0),
            unmatched: row
                .try_get::<Option<i64>, _>("replay_unmatched")?
                .unwrap_or(0),
            replays: row.try_get("replays")?,
        }),
        _ => None,
    };
    Ok(StoredDeadLetter {
        id: row.try_get("id")?,
        channel: channel_of(row, "channel")?,
        reason: row.try_get("reason")?,
        content_type: row.try_get("content_type")?,
        body: row.try_get("body")?,
        body_bytes: row.try_get("body_bytes")?,
        received_at_ms: row.try_get("received_at")?,
        verification: ReceiptVerification::from_columns(
            verification.as_deref(),
            row.try_get("verification_detail")?,
        )?,
        open: row.try_get("is_open")?,
        replay,
    })
}
