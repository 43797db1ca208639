//! The read side for dashboards and senders: campaign lists and message
//! queries, as data. Backends provide two primitives per query (the SQL is in
//! `sqlite/listing.rs` and `postgres/listing.rs`); the paging rules are here,
//! written once.
//!
//! # Message pages
//!
//! A message's `seen` mask determines its current status, so the filters on
//! status, stages seen and stages not seen become one set of allowed masks
//! ([`masks_matching`]). A page reads *candidates* in message id order from
//! an index (one range of `messages_by_campaign_seen` per allowed mask,
//! merged; or `messages_by_failure` for a failure code), then the rows of
//! those candidates with every filter checked again. When a filter the index
//! cannot serve is given (`updated_since`; the masks under a failure code),
//! the candidates are bounded by [`SCAN_BUDGET`] rather than by the page
//! size, so one page never reads more than that many rows however rare the
//! matches: a page may then be short, or empty, and still have a cursor.

use crate::domain::{CampaignCounters, Channel, CurrentStatus, Failure, Status, StatusSet};

use super::types::CampaignInfo;

/// Most candidate rows one message page examines when a filter is checked
/// on the rows rather than served by the index.
pub const SCAN_BUDGET: u32 = 5_000;

/// Where a campaign is in the list's order: newest activity first, then
/// the higher key first. Activity (`campaign_counters.updated_at`) only
/// rises (the commit keeps the larger of the old and the new time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActivityKey {
    /// Unix milliseconds of the campaign's last change.
    pub activity_ms: i64,
    pub campaign_pk: i64,
}

/// Which campaigns to list.
#[derive(Clone, Debug)]
pub struct CampaignQuery {
    /// Only this tenant's; every tenant's for `None` (the admin).
    pub tenant_id: Option<String>,
    /// Only these campaign names (a restricted token).
    pub campaigns: Option<Vec<String>>,
    /// Only campaigns strictly after this key in the list's order.
    pub after: Option<ActivityKey>,
    pub limit: u32,
}

/// One listed campaign.
#[derive(Clone, Debug)]
pub struct ListedCampaign {
    pub info: CampaignInfo,
    pub key: ActivityKey,
    /// Unix milliseconds of the campaign's creation.
    pub created_at_ms: i64,
    pub counters: CampaignCounters,
}

/// Which messages of a campaign to read.
#[derive(Clone, Debug)]
pub struct MessageQuery {
    pub campaign_pk: i64,
    /// The allowed `seen` masks, ascending; never empty (an empty selection
    /// is answered without a query).
    pub masks: Vec<u8>,
    pub failure_code: Option<String>,
    /// Only messages changed at or after this time (Unix ms, server time).
    pub updated_since_ms: Option<i64>,
    /// Only messages with ids above this.
    pub after_id: i64,
    pub limit: u32,
}

impl MessageQuery {
    /// Whether every closed mask is allowed (no status or stage filter).
    pub fn all_masks(&self) -> bool {
        self.masks.len() == closed_masks().len()
    }

    /// Whether some filter is checked on the rows rather than by the index
    /// the candidates come from.
    pub fn has_residual(&self) -> bool {
        self.updated_since_ms.is_some() || (self.failure_code.is_some() && !self.all_masks())
    }
}

/// One message as the query endpoints show it.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRow {
    pub message_pk: i64,
    pub channel: Channel,
    pub provider_message_id: String,
    pub recipient: Option<String>,
    pub status: CurrentStatus,
    pub set: StatusSet,
    pub failure: Option<Failure>,
    /// Unix milliseconds of the row's last change (server time).
    pub updated_at_ms: i64,
}

/// A page of messages and where the next one starts (`None`: the selection
/// is exhausted).
#[derive(Clone, Debug, Default)]
pub struct MessagePage {
    pub messages: Vec<MessageRow>,
    pub next_after: Option<i64>,
}

/// Every mask a message can have: the subsets of the statuses closed under
/// the implications (16 of the 64).
pub fn closed_masks() -> Vec<u8> {
    (0u8..64)
        .filter(|mask| StatusSet::from_parts(*mask, [None; 6]).mask() == *mask)
        .collect()
}

/// Returns the masks of messages whose current status is one of `statuses`
/// (any when empty), that reached every stage of `seen` and none of
/// `not_seen`. A stage reached by implication counts as reached (a `read`
/// message has reached `delivered`), as in the funnel counters.
pub fn masks_matching(statuses: &[CurrentStatus], seen: &[Status], not_seen: &[Status]) -> Vec<u8> {
    closed_masks()
        .into_iter()
        .filter(|mask| {
            let set = StatusSet::from_parts(*mask, [None; 6]);
            (statuses.is_empty() || statuses.contains(&set.current()))
                && seen.iter().all(|status| set.contains(*status))
                && !not_seen.iter().any(|status| set.contains(*status))
        })
        .collect()
}

/// Builds a page from the candidates a backend read (`candidates`, ids
/// ascending, at most `wanted`) and the rows among them that pass every
/// filter (`rows`, ids ascending).
pub(crate) fn settle_page(
    query: &MessageQuery,
    wanted: u32,
    candidates: &[i64],
    mut rows: Vec<MessageRow>,
) -> MessagePage {
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    rows.truncate(limit);
    let next_after = if rows.len() >= limit && limit > 0 {
        rows.last().map(|row| row.message_pk)
    } else if candidates.len() >= usize::try_from(wanted).unwrap_or(usize::MAX) {
        candidates.last().copied()
    } else {
        None
    };
    MessagePage {
        messages: rows,
        next_after,
    }
}

/// How many candidates a page reads.
pub(crate) fn candidates_wanted(query: &MessageQuery) -> u32 {
    if query.has_residual() {
        query.limit.max(SCAN_BUDGET)
    } else {
        query.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_closed_masks() {
        let masks = closed_masks();
        assert_eq!(masks.len(), 16);
        assert!(masks.contains(&0));
        // read without delivered is not closed.
        assert!(!masks.contains(&Status::Read.bit()));
    }

    #[test]
    fn the_resend_audience_is_delivered_and_not_read() {
        let masks = masks_matching(&[], &[Status::Delivered], &[Status::Read]);
        for mask in &masks {
            let set = StatusSet::from_parts(*mask, [None; 6]);
            assert!(set.contains(Status::Delivered) && !set.contains(Status::Read));
        }
        // delivered, delivered+complained, each with or without failed.
        assert_eq!(masks.len(), 4);
        assert!(masks_matching(&[], &[Status::Read], &[Status::Delivered]).is_empty());
    }

    #[test]
    fn current_status_filters_partition_the_masks() {
        let total: usize = CurrentStatus::ALL
            .iter()
            .map(|status| masks_matching(&[*status], &[], &[]).len())
            .sum();
        assert_eq!(total, 16);
        assert_eq!(masks_matching(&[CurrentStatus::Pending], &[], &[]), vec![0]);
    }
}
