//! What SSE events carry, encoded once per commit for every stream: the
//! hub publishes data, and the first stream that sends a campaign's
//! counters or a change encodes it into the update's shared cell.

use bytestring::ByteString;
use serde::Serialize;

use crate::domain::CampaignCounters;
use crate::hub::{PublishedCampaign, PublishedChange};
use crate::clock::format_ms;
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

/// The `data:` of a published change's `status` event, encoded once.
pub(super) fn status_data(published: &PublishedChange) -> ByteString {
    published
        .encoded
        .get_or_init(|| {
            status_json(
                &published.counters.tenant_id,
                &published.counters.campaign_id,
                &published.change,
            )
        })
        .clone()
}

/// The `data:` of a published campaign's `metrics` event, encoded once.
pub(super) fn metrics_data(published: &PublishedCampaign) -> ByteString {
    published
        .encoded
        .get_or_init(|| counters_json(&published.counters))
        .clone()
}
