//! "Queue, a bounded number of groups in flight, reply after commit": the
//! loop both the DB actor and the campaign actors run, written once.
//!
//! Items queue while the groups in flight are out; when one is done,
//! everything that queued meanwhile (up to a weight bound) goes out as the
//! next group. Under load groups grow by themselves; at rest a lone item goes
//! at once, with no linger delay. The DB actor keeps as many batches out as
//! the store takes ([`crate::store::Store::commits_in_flight`]); a campaign
//! actor keeps no limit (see `campaign_actor`).

use std::collections::VecDeque;

/// A FIFO of weighted items of which at most `limit` groups at a time are
/// in flight.
#[derive(Debug)]
pub(super) struct OneInFlight<T> {
    /// Items waiting for the next group, oldest first, with their weights.
    queue: VecDeque<(T, usize)>,
    /// Sum of the weights in `queue`.
    queued_weight: usize,
    /// Groups in flight.
    in_flight: usize,
    /// Most groups in flight at once (at least one).
    limit: usize,
}

impl<T> OneInFlight<T> {
    /// A queue with up to `limit` groups in flight at a time.
    pub(super) fn with_limit(limit: usize) -> Self {
        OneInFlight {
            queue: VecDeque::new(),
            queued_weight: 0,
            in_flight: 0,
            limit: limit.max(1),
        }
    }

    /// Queues `item` for a coming group.
    pub(super) fn push(&mut self, item: T, weight: usize) {
        self.queue.push_back((item, weight));
        self.queued_weight += weight;
    }

    /// Returns the weight waiting for a group.
    pub(super) fn queued_weight(&self) -> usize {
        self.queued_weight
    }

    /// Tells whether nothing is queued and no group is in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight == 0
    }

    /// Takes the next group, oldest first, of at most `max_weight` (a first
    /// item heavier than that goes alone), and marks it in flight; `None`
    /// while `limit` groups are in flight or when nothing is queued.
    pub(super) fn next_group(&mut self, max_weight: usize) -> Option<(Vec<T>, usize)> {
        if self.in_flight >= self.limit || self.queue.is_empty() {
            return None;
        }
        let mut group = Vec::new();
        let mut weight = 0;
        while let Some((_, next)) = self.queue.front() {
            if !group.is_empty() && weight + next > max_weight {
                break;
            }
            let Some((item, item_weight)) = self.queue.pop_front() else {
                break;
            };
            weight += item_weight;
            group.push(item);
        }
        self.queued_weight -= weight;
        self.in_flight += 1;
        Some((group, weight))
    }

    /// Marks a group in flight as done: the next may go.
    pub(super) fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_at_a_time_oldest_first_within_the_bound() {
        let mut queue = OneInFlight::with_limit(1);
        assert!(queue.next_group(10).is_none() && queue.is_idle());
        for (item, weight) in [("a", 4), ("b", 4), ("c", 4), ("d", 30)] {
            queue.push(item, weight);
        }
        assert_eq!(queue.queued_weight(), 42);
        assert_eq!(queue.next_group(10), Some((vec!["a", "b"], 8)));
        assert!(queue.next_group(10).is_none(), "one group in flight");
        queue.finish();
        assert_eq!(queue.next_group(10), Some((vec!["c"], 4)));
        queue.finish();
        assert_eq!(
            queue.next_group(10),
            Some((vec!["d"], 30)),
            "heavy item alone"
        );
        assert!(!queue.is_idle());
        queue.finish();
        assert!(queue.is_idle() && queue.queued_weight() == 0);
    }

    #[test]
    fn up_to_the_limit_of_groups_go_out_oldest_first() {
        let mut queue = OneInFlight::with_limit(2);
        for item in ["a", "b", "c"] {
            queue.push(item, 1);
            // Each push is offered at once, as the campaign actor does.
            let _ = queue.next_group(10);
        }
        assert_eq!(queue.queued_weight(), 1, "c waits: two groups are out");
        assert!(queue.next_group(10).is_none());
        queue.finish();
        assert_eq!(queue.next_group(10), Some((vec!["c"], 1)));
        queue.finish();
        queue.finish();
        assert!(queue.is_idle());
    }
}
