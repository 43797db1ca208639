//! What SSE events carry. The hub publishes data; live events are encoded
//! once, by the first stream that sends them, into the published item's
//! shared cell: a change once, a campaign's counters once per coalescing
//! window, whatever the number of streams (`statushub_sse_frames_encoded_total`
//! counts these encodings). Snapshots and replays, which are per stream,
//! are encoded per stream.

use bytestring::ByteString;
use prometheus::IntCounter;
use serde::Serialize;

use crate::clock::format_ms;
use crate::domain::CampaignCounters;
use crate::hub::{PublishedCampaign, PublishedChange};
use crate::store::StatusChange;

/// The `data:` of an `event: status`.
#[derive(Serialize)]
struct StatusPayload<'a> {
    tenant_id: &'a str,
    campaign_id: &'a str,
    channel: &'a str,
    provider_message_id: &'a str,
    status: &'a str,
    event: &'a str,
    provider_at: String,
    version: i64,
    event_id: i64,
}

/// Encodes a change of `tenant_id`'s campaign `campaign_id`.
pub(super) fn status_json(tenant_id: &str, campaign_id: &str, change: &StatusChange) -> ByteString {
    let payload = StatusPayload {
        tenant_id,
        campaign_id,
        channel: change.channel.as_str(),
        provider_message_id: &change.provider_message_id,
        status: change.status.as_str(),
        event: &change.event,
        provider_at: format_ms(change.provider_ts_ms),
        version: change.version,
        event_id: change.event_id,
    };
    // Serializing strings and integers cannot fail.
    ByteString::from(serde_json::to_string(&payload).unwrap_or_default())
}

/// Encodes counters as the `data:` of `snapshot` and `metrics` events.
pub(super) fn counters_json(counters: &CampaignCounters) -> ByteString {
    // Serializing strings and integers cannot fail.
    ByteString::from(serde_json::to_string(counters).unwrap_or_default())
}

/// The `data:` of a published change's `status` event, encoded once
/// (counted in `encoded`).
pub(super) fn status_data(published: &PublishedChange, encoded: &IntCounter) -> ByteString {
    published
        .encoded
        .get_or_init(|| {
            encoded.inc();
            status_json(
                &published.counters.tenant_id,
                &published.counters.campaign_id,
                &published.change,
            )
        })
        .clone()
}

/// The `data:` of a published campaign's `metrics` event, encoded once
/// (counted in `encoded`).
pub(super) fn metrics_data(published: &PublishedCampaign, encoded: &IntCounter) -> ByteString {
    published
        .encoded
        .get_or_init(|| {
            encoded.inc();
            counters_json(&published.counters)
        })
        .clone()
}
