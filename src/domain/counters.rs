//! A campaign's live counters: the metrics JSON and the SSE payload.

use serde::{Deserialize, Serialize};

use super::status::{CurrentStatus, Tally};
use crate::clock::format_ms;

/// Messages per current status, as `by_status` in the metrics JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ByStatus {
    pub pending: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
}

/// A campaign's counters as dashboards see them (`GET …/metrics`, SSE data).
///
/// `sent`, `delivered`, `read`, `clicked` and `complained` are funnel counts
/// (messages that reached at least that stage); `failed` and `by_status`
/// count current status. `version` rises by one with every applied change of
/// a message's status set, so a dashboard can tell which of two snapshots is
/// newer. The campaign actor owns one of these; the store keeps the same
/// numbers in the same transaction as the message rows they count.
///
/// Only serialized (to the metrics JSON and SSE data): nothing reads these
/// back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CampaignCounters {
    pub tenant_id: String,
    pub campaign_id: String,
    pub version: i64,
    pub total: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
    pub clicked: i64,
    pub complained: i64,
    pub by_status: ByStatus,
    /// Unix milliseconds of the last change; serialized as `updated_at`, in
    /// RFC 3339 UTC ([`format_ms`]).
    #[serde(rename = "updated_at", serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at_ms: i64,
}

/// Serializes Unix milliseconds as [`format_ms`] text.
fn as_rfc3339<S: serde::Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_ms(*ms))
}

impl CampaignCounters {
    /// Builds the counters JSON from a campaign's tally.
    pub fn from_tally(
        tenant_id: &str,
        campaign_id: &str,
        version: i64,
        tally: &Tally,
        updated_at_ms: i64,
    ) -> Self {
        CampaignCounters {
            tenant_id: tenant_id.to_owned(),
            campaign_id: campaign_id.to_owned(),
            version,
            total: tally.total,
            sent: tally.sent,
            delivered: tally.delivered,
            read: tally.read,
            failed: tally.current(CurrentStatus::Failed),
            clicked: tally.clicked,
            complained: tally.complained,
            by_status: ByStatus {
                pending: tally.current(CurrentStatus::Pending),
                sent: tally.current(CurrentStatus::Sent),
                delivered: tally.current(CurrentStatus::Delivered),
                read: tally.current(CurrentStatus::Read),
                failed: tally.current(CurrentStatus::Failed),
            },
            updated_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updated_at_serializes_as_rfc3339_under_its_json_name() {
        let counters =
            CampaignCounters::from_tally("t1", "c1", 3, &Tally::default(), 1_700_000_000_500);
        let json = serde_json::to_value(&counters).unwrap();
        assert_eq!(json["updated_at"], "2023-11-14T22:13:20.500Z");
        assert!(json.get("updated_at_ms").is_none(), "{json}");
    }
}
