//! What SSE events carry. The hub publishes data; live events are encoded
//! once, by the first stream that sends them, into the published item's
//! shared cell: a change once, a campaign's counters once per coalescing
//! window, whatever the number of streams (`statushub_sse_frames_encoded_total`
//! counts these encodings). Snapshots and replays, which are per stream,
//! are encoded per stream.

use std::time::Duration;

use actix_web_lab::sse;
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

/// The last event of every stream when the hub shuts down:
///
/// ```text
/// event: shutdown
/// retry: 1000
/// data: {"reason":"server shutting down"}
/// ```
///
/// `retry:` tells the client how soon to reconnect; it then reaches
/// whichever instance answers (and resumes with `Last-Event-ID`).
///
/// # Implementation Notes
///
/// actix-web-lab writes `retry:` only as the stream's first line, and a
/// data event's fields as given, each on its own line. So the `retry:` line
/// travels in the event name, after a line break: the bytes are exactly the
/// event above (the test below checks them, should the crate ever change).
pub(super) fn shutdown_event(retry: Duration) -> sse::Event {
    sse::Data::new(r#"{"reason":"server shutting down"}"#)
        .event(format!("shutdown\nretry: {}", retry.as_millis()))
        .into()
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody as _;

    use super::*;

    #[actix_web::test]
    async fn the_shutdown_event_carries_a_retry_field() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(shutdown_event(Duration::from_millis(1500)))
            .await
            .unwrap();
        drop(tx);
        let body = sse::Sse::from_infallible_receiver(rx).boxed();
        let bytes = actix_web::body::to_bytes(body).await.unwrap();
        assert_eq!(
            bytes,
            "event: shutdown\nretry: 1500\ndata: {\"reason\":\"server shutting down\"}\n\n"
        );
    }
}
