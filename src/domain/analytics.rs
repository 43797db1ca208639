//! Campaign analytics kept incrementally beside the counters: the funnel
//! over time (per minute of provider time), the time from `sent` to
//! `delivered` and to `read` (a log-bucketed histogram), failure reasons and
//! WhatsApp pricing. Pure: no I/O.
//!
//! Each message *contributes* a few keys ([`Contribution::of`]); a commit
//! moves the campaign's stored rows by the difference between what each
//! changed message contributed before and after ([`AnalyticsDelta`]). The
//! contribution is a function of the message's stored state only (its
//! status set with first timestamps, its failure, complaint type and
//! pricing), so the rows always equal a recount over `messages`, whatever
//! the order or repetition of arrival.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::status::{Status, StatusSet};
use super::update::{Channel, Failure};

/// The funnel stages of the time series, in column order.
pub const STAGES: [&str; 5] = ["sent", "delivered", "read", "clicked", "failed"];

/// Milliseconds in a minute, the finest bucket.
pub const MINUTE_MS: i64 = 60_000;

/// Longest text kept for a pricing category, complaint type or failure
/// reason field (longer provider text is cut).
pub const MAX_LABEL: usize = 128;

/// Returns the minute (Unix minutes, floored) a timestamp falls in.
pub const fn minute_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(MINUTE_MS)
}

/// Returns the start of the bucket of `width` minutes that `minute` falls
/// in (buckets are aligned on the Unix epoch). `width` must be positive.
pub const fn bucket_start(minute: i64, width: i64) -> i64 {
    minute - minute.rem_euclid(width)
}

/// Returns when a message first reached each stage of [`STAGES`], from
/// its first timestamps: a stage reached by implication (a `read` with no
/// `delivered` report) is reached at the earliest status that implies it.
pub fn stage_times(set: &StatusSet) -> [Option<i64>; 5] {
    let earliest = |statuses: &[Status]| {
        statuses
            .iter()
            .filter_map(|status| set.first_seen(*status))
            .min()
    };
    [
        earliest(&[
            Status::Sent,
            Status::Delivered,
            Status::Read,
            Status::Clicked,
            Status::Complained,
        ]),
        earliest(&[
            Status::Delivered,
            Status::Read,
            Status::Clicked,
            Status::Complained,
        ]),
        earliest(&[Status::Read, Status::Clicked]),
        earliest(&[Status::Clicked]),
        earliest(&[Status::Failed]),
    ]
}

/// Exact bins below this many milliseconds; above, [`SUB_BINS`] bins per
/// power of two.
const LINEAR: i64 = 16;
/// Bins per power of two above [`LINEAR`]: a bin is at most 1/16 of its
/// lower bound wide, so its midpoint is within 3.2% of any value in it.
const SUB_BINS: i64 = 16;

/// Returns the histogram bin of a latency in milliseconds (negative
/// latencies, from providers' clock skew, count as 0). Bins are exact below
/// 16 ms, then 16 per power of two; the highest bin of an `i64` is 959.
pub fn latency_bin(latency_ms: i64) -> i64 {
    let value = latency_ms.max(0);
    if value < LINEAR {
        return value;
    }
    // `value` >= 16, so its highest set bit is at least 4.
    let exponent = i64::from(63 - value.leading_zeros());
    let sub = (value >> (exponent - 4)) & (SUB_BINS - 1);
    LINEAR + (exponent - 4) * SUB_BINS + sub
}

/// Returns the lowest latency of a bin and the bin's width, in ms.
pub fn bin_bounds(bin: i64) -> (i64, i64) {
    if bin < LINEAR {
        return (bin.max(0), 1);
    }
    let exponent = (bin - LINEAR) / SUB_BINS + 4;
    let sub = (bin - LINEAR) % SUB_BINS;
    let shift = (exponent - 4).min(58);
    ((SUB_BINS + sub) << shift, 1 << shift)
}

/// Returns the value reported for a bin: its midpoint (its value for the
/// exact bins).
pub fn bin_value(bin: i64) -> i64 {
    let (low, width) = bin_bounds(bin);
    low.saturating_add(width / 2)
}

/// Returns the `percent`-th percentile (nearest rank: the smallest value
/// at least `percent`% of the samples are at or below) of a histogram of
/// `(bin, count)` rows in any order, as the bin's [`bin_value`]; `None`
/// when it holds no samples.
pub fn percentile(bins: &[(i64, i64)], percent: u32) -> Option<i64> {
    let mut sorted: Vec<(i64, i64)> = bins
        .iter()
        .copied()
        .filter(|(_, count)| *count > 0)
        .collect();
    sorted.sort_unstable();
    let total: i64 = sorted.iter().map(|(_, count)| count).sum();
    if total <= 0 {
        return None;
    }
    // Nearest rank: ceil(percent × total / 100), at least 1.
    let rank = ((i128::from(percent.min(100)) * i128::from(total) + 99) / 100).max(1);
    let mut seen: i128 = 0;
    for (bin, count) in sorted {
        seen += i128::from(count);
        if seen >= rank {
            return Some(bin_value(bin));
        }
    }
    None
}

/// A message's WhatsApp pricing, as the earliest status carrying a
/// `pricing` object reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pricing {
    /// `pricing.category` (`marketing`, `utility`, `authentication`, `service`…).
    pub category: String,
    /// `pricing.billable`; when absent, whether `pricing.type` is `regular`.
    pub billable: bool,
    /// Provider timestamp of the status it came with.
    pub at_ms: i64,
}

impl Pricing {
    /// Reads the `pricing` object a WhatsApp status keeps in its details;
    /// `None` without one, without a category, or without `billable` or
    /// `type`.
    pub fn from_details(details: &Value, at_ms: i64) -> Option<Pricing> {
        let pricing = details.get("pricing")?;
        let category = pricing.get("category")?.as_str()?;
        if category.is_empty() {
            return None;
        }
        let billable = match pricing.get("billable").and_then(Value::as_bool) {
            Some(billable) => billable,
            None => pricing.get("type")?.as_str()? == "regular",
        };
        Some(Pricing {
            category: cut(category),
            billable,
            at_ms,
        })
    }

    /// Tells whether this pricing is kept rather than `other`: the earliest
    /// wins, then the smallest category and `billable`, so the kept one does
    /// not depend on arrival order.
    pub fn precedes(&self, other: &Pricing) -> bool {
        (self.at_ms, &self.category, self.billable) < (other.at_ms, &other.category, other.billable)
    }
}

/// Reads an SES complaint's feedback type (`abuse`, `fraud`…) from its
/// details.
pub fn complaint_type(details: &Value) -> Option<String> {
    details
        .get("complaintFeedbackType")?
        .as_str()
        .filter(|text| !text.is_empty())
        .map(cut)
}

/// Cuts provider text to [`MAX_LABEL`] bytes at a character boundary.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_LABEL) {
        Some((index, _)) => text[..index].to_owned(),
        None => text.to_owned(),
    }
}

/// Why a message failed or complained, as the campaign's reasons count it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Reason {
    /// `whatsapp_error`, `ses_bounce`, `ses_reject`, `ses_rendering_failure`
    /// or `ses_complaint`.
    pub kind: String,
    /// WhatsApp error code; SES `bounceType/bounceSubType`, `Reject`,
    /// `RenderingFailure`; or the complaint feedback type (`unspecified`
    /// when SES gave none).
    pub code: String,
    /// WhatsApp error title; for SES a fixed text per code (the per-message
    /// diagnostic stays with the message).
    pub title: String,
}

impl Reason {
    /// Returns the reason a stored failure counts under.
    pub fn of_failure(channel: Channel, failure: &Failure) -> Reason {
        let (kind, title) = match channel {
            Channel::Whatsapp => ("whatsapp_error", cut(&failure.title)),
            Channel::Email => match failure.code.as_str() {
                "Reject" => ("ses_reject", "rejected by SES".to_owned()),
                "RenderingFailure" => (
                    "ses_rendering_failure",
                    "template failed to render".to_owned(),
                ),
                code => {
                    let (bounce_type, sub_type) = code.split_once('/').unwrap_or((code, ""));
                    (
                        "ses_bounce",
                        cut(&format!("{bounce_type} bounce ({sub_type})")),
                    )
                }
            },
        };
        Reason {
            kind: kind.to_owned(),
            code: cut(&failure.code),
            title,
        }
    }

    /// Returns the reason a complaint counts under.
    pub fn of_complaint(feedback_type: Option<&str>) -> Reason {
        let code = feedback_type.unwrap_or("unspecified");
        Reason {
            kind: "ses_complaint".to_owned(),
            code: cut(code),
            title: cut(&format!("complaint ({code})")),
        }
    }
}

/// What one message contributes to its campaign's analytics rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contribution {
    /// Per stage of [`STAGES`], the minute it was first reached.
    pub minutes: [Option<i64>; 5],
    /// Latency bins from first `sent` to `delivered` and to `read`.
    pub latency: [Option<i64>; 2],
    /// The failure reason, then the complaint reason.
    pub reasons: [Option<Reason>; 2],
    /// `(category, billable)` of the message's pricing.
    pub pricing: Option<(String, bool)>,
}

/// The stored state of a message that analytics read.
#[derive(Clone, Copy, Debug)]
pub struct MessageFacts<'a> {
    pub channel: Channel,
    pub set: &'a StatusSet,
    pub failure: Option<&'a Failure>,
    pub complaint_type: Option<&'a str>,
    pub pricing: Option<&'a Pricing>,
}

impl Contribution {
    /// Returns what a message in this state contributes.
    pub fn of(facts: &MessageFacts<'_>) -> Contribution {
        let times = stage_times(facts.set);
        let sent = facts.set.first_seen(Status::Sent);
        let since_sent = |at: Option<i64>| {
            let (sent, at) = (sent?, at?);
            Some(latency_bin(at.saturating_sub(sent)))
        };
        let complaint = facts
            .set
            .contains(Status::Complained)
            .then(|| Reason::of_complaint(facts.complaint_type));
        Contribution {
            minutes: times.map(|at| at.map(minute_of)),
            latency: [since_sent(times[1]), since_sent(times[2])],
            reasons: [
                facts
                    .failure
                    .map(|failure| Reason::of_failure(facts.channel, failure)),
                complaint,
            ],
            pricing: facts
                .pricing
                .map(|pricing| (pricing.category.clone(), pricing.billable)),
        }
    }
}

/// How a commit moves one campaign's analytics rows: per key, the change in
/// messages (zero entries are dropped before writing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnalyticsDelta {
    /// Per minute, the change per stage of [`STAGES`].
    pub minutes: BTreeMap<i64, [i64; 5]>,
    /// Per latency bin, the change of `[to_delivered, to_read]`.
    pub latency: BTreeMap<i64, [i64; 2]>,
    pub reasons: BTreeMap<Reason, i64>,
    /// Per `(category, billable)`.
    pub pricing: BTreeMap<(String, bool), i64>,
}

impl AnalyticsDelta {
    /// Adds `sign` (1 or -1) times a contribution.
    pub fn add(&mut self, contribution: &Contribution, sign: i64) {
        for (stage, minute) in contribution.minutes.iter().enumerate() {
            if let Some(minute) = minute {
                self.minutes.entry(*minute).or_default()[stage] += sign;
            }
        }
        for (metric, bin) in contribution.latency.iter().enumerate() {
            if let Some(bin) = bin {
                self.latency.entry(*bin).or_default()[metric] += sign;
            }
        }
        for reason in contribution.reasons.iter().flatten() {
            *self.reasons.entry(reason.clone()).or_default() += sign;
        }
        if let Some(pricing) = &contribution.pricing {
            *self.pricing.entry(pricing.clone()).or_default() += sign;
        }
    }

    /// Adds the change of one message from `before` to `after`.
    pub fn transition(&mut self, before: &Contribution, after: &Contribution) {
        if before != after {
            self.add(before, -1);
            self.add(after, 1);
        }
    }

    /// Drops the keys that did not move.
    pub fn prune(&mut self) {
        self.minutes
            .retain(|_, counts| counts.iter().any(|c| *c != 0));
        self.latency
            .retain(|_, counts| counts.iter().any(|c| *c != 0));
        self.reasons.retain(|_, count| *count != 0);
        self.pricing.retain(|_, count| *count != 0);
    }

    /// Tells whether nothing moves.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
            && self.latency.is_empty()
            && self.reasons.is_empty()
            && self.pricing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn bins_are_exact_then_logarithmic() {
        for value in 0..16 {
            assert_eq!(latency_bin(value), value);
            assert_eq!(bin_value(value), value);
        }
        assert_eq!(latency_bin(-5), 0);
        assert_eq!(latency_bin(16), 16);
        assert_eq!(latency_bin(31), 31);
        assert_eq!(latency_bin(32), 32);
        assert_eq!(latency_bin(33), 32);
        assert_eq!(latency_bin(i64::MAX), 959);
        assert_eq!(bin_bounds(32), (32, 2));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[(3, 0)], 50), None);
        // 1, 2, 3, 4 ms: p50 is 2, p90 is 4.
        let bins = [(4, 1), (1, 1), (3, 1), (2, 1)];
        assert_eq!(percentile(&bins, 50), Some(2));
        assert_eq!(percentile(&bins, 90), Some(4));
        assert_eq!(percentile(&bins, 100), Some(4));
        assert_eq!(percentile(&bins, 0), Some(1));
    }

    #[test]
    fn implied_stages_take_the_earliest_implying_time() {
        let set = StatusSet::EMPTY
            .with(Status::Read, 120_000)
            .with(Status::Sent, 10_000);
        assert_eq!(
            stage_times(&set),
            [Some(10_000), Some(120_000), Some(120_000), None, None]
        );
        let facts = MessageFacts {
            channel: Channel::Whatsapp,
            set: &set,
            failure: None,
            complaint_type: None,
            pricing: None,
        };
        let contribution = Contribution::of(&facts);
        assert_eq!(
            contribution.minutes,
            [Some(0), Some(2), Some(2), None, None]
        );
        assert_eq!(contribution.latency[0], Some(latency_bin(110_000)));
    }

    #[test]
    fn pricing_reads_billable_or_type() {
        let details = serde_json::json!({"pricing": {"billable": true, "pricing_model": "CBP", "category": "service"}});
        let pricing = Pricing::from_details(&details, 5).unwrap();
        assert_eq!(
            (pricing.category.as_str(), pricing.billable),
            ("service", true)
        );
        let free = serde_json::json!({"pricing": {"pricing_model": "PMP", "category": "utility", "type": "free_customer_service"}});
        assert!(!Pricing::from_details(&free, 5).unwrap().billable);
        assert!(
            Pricing::from_details(&serde_json::json!({"pricing": {"category": "x"}}), 5).is_none()
        );
        assert!(Pricing::from_details(&Value::Null, 5).is_none());
    }

    #[test]
    fn ses_reasons_group_by_type_and_sub_type() {
        let failure = Failure {
            code: "Permanent/General".into(),
            title: "smtp; 550 5.1.1 user unknown".into(),
        };
        let reason = Reason::of_failure(Channel::Email, &failure);
        assert_eq!(reason.kind, "ses_bounce");
        assert_eq!(reason.title, "Permanent bounce (General)");
        assert_eq!(Reason::of_complaint(None).code, "unspecified");
    }

    proptest! {
        /// Every latency falls in the bin whose bounds hold it, and the
        /// reported midpoint is within 3.2% (or exact below 16 ms).
        #[test]
        fn bins_hold_their_values(value in 0i64..(1 << 50)) {
            let bin = latency_bin(value);
            let (low, width) = bin_bounds(bin);
            prop_assert!(low <= value && value < low + width);
            let reported = bin_value(bin);
            prop_assert!((reported - value).abs() as f64 <= (value as f64) * 0.032 + 0.5);
            prop_assert!(latency_bin(value + 1) >= bin);
        }

        /// Bucket starts are aligned, hold their minute, and nest (an
        /// hour's buckets are made of whole 5-minute buckets).
        #[test]
        fn buckets_nest(ms in -10_000_000_000_000i64..10_000_000_000_000) {
            let minute = minute_of(ms);
            prop_assert!(minute * MINUTE_MS <= ms && ms < (minute + 1) * MINUTE_MS);
            for width in [1, 5, 60] {
                let start = bucket_start(minute, width);
                prop_assert!(start <= minute && minute < start + width);
                prop_assert_eq!(start.rem_euclid(width), 0);
            }
            prop_assert_eq!(bucket_start(bucket_start(minute, 5), 60), bucket_start(minute, 60));
        }

        /// A percentile read from the histogram is within 3.2% of the exact
        /// nearest-rank percentile, whatever the order of the samples.
        #[test]
        fn percentiles_are_within_the_bin_accuracy(
            mut samples in prop::collection::vec(0i64..100_000_000, 1..200),
            percent in prop::sample::select(vec![50u32, 90]),
        ) {
            let mut bins: BTreeMap<i64, i64> = BTreeMap::new();
            for sample in &samples {
                *bins.entry(latency_bin(*sample)).or_default() += 1;
            }
            let rows: Vec<(i64, i64)> = bins.into_iter().rev().collect();
            let estimate = percentile(&rows, percent).unwrap();
            samples.sort_unstable();
            let rank = (percent as usize * samples.len()).div_ceil(100).max(1);
            let exact = samples[rank - 1];
            prop_assert!((estimate - exact).abs() as f64 <= exact as f64 * 0.032 + 0.5,
                "estimate {} exact {}", estimate, exact);
        }

        /// Moving contributions by transitions, in any order and with
        /// repeats, leaves the delta equal to the final contributions.
        #[test]
        fn transitions_sum_to_the_final_state(
            events in prop::collection::vec((0usize..4, 0usize..6, 0i64..600_000), 0..40),
        ) {
            let mut sets = [StatusSet::EMPTY; 4];
            let mut delta = AnalyticsDelta::default();
            let contribution = |set: &StatusSet| Contribution::of(&MessageFacts {
                channel: Channel::Whatsapp, set, failure: None, complaint_type: None, pricing: None,
            });
            for (message, status, at) in events {
                let after = sets[message].with(Status::ALL[status], at);
                delta.transition(&contribution(&sets[message]), &contribution(&after));
                sets[message] = after;
            }
            delta.prune();
            let mut recount = AnalyticsDelta::default();
            for set in &sets {
                recount.add(&contribution(set), 1);
            }
            recount.prune();
            prop_assert_eq!(delta, recount);
        }
    }
}
