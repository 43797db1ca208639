//! The directory: which campaign (and message row) a provider message id
//! belongs to, remembered so that a webhook for a known message is routed
//! without a database read.
//!
//! It needs no invalidation because what it remembers never changes: a
//! registered message never moves to another campaign (registration
//! refuses an id another campaign holds) and is never deleted. So an entry
//! stays true for every instance sharing the store, whoever registered the
//! message. Only ids that were found are remembered: an unknown id may be
//! registered at any moment, here or on another instance, so a miss always
//! asks the store. (Should messages ever expire, expiry must remove them
//! here as well.)
//!
//! It is bounded: at most `capacity` ids, about 100 bytes each;
//! `quick_cache` evicts the ones least worth keeping (a CLOCK-Pro-like
//! policy that resists scans). Capacity 0 turns it off.

use std::hash::Hash;

use prometheus::IntCounter;
use quick_cache::Equivalent;
use quick_cache::sync::Cache;

use crate::domain::Channel;
use crate::metrics::Metrics;
use crate::store::MessageRef;

/// An id as the directory keeps it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    channel: Channel,
    id: Box<str>,
}

/// An id as a lookup names it, without allocating. Hashes like [`Key`]:
/// the channel, then the id as a `str`.
#[derive(Hash)]
struct KeyRef<'a> {
    channel: Channel,
    id: &'a str,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.channel == key.channel && self.id == &*key.id
    }
}

/// The bounded map of message ids to where they live. Cheap to share
/// (behind an `Arc`); safe to use from every HTTP worker at once.
#[derive(Debug)]
pub struct Directory {
    cache: Option<Cache<Key, MessageRef>>,
    /// `statushub_id_directory_lookups_total{result="hit"}`, resolved once:
    /// a lookup then costs one atomic increment, not a label lookup.
    hits: IntCounter,
    /// The same with `result="miss"`.
    misses: IntCounter,
}

impl Directory {
    /// Returns an empty directory of at most `capacity` ids (0: none).
    pub fn new(capacity: usize, metrics: Metrics) -> Self {
        Directory {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
            hits: metrics.directory_lookups.with_label_values(&["hit"]),
            misses: metrics.directory_lookups.with_label_values(&["miss"]),
        }
    }

    /// Where a message lives, if it is known here; counts the hit or miss.
    pub fn get(&self, channel: Channel, id: &str) -> Option<MessageRef> {
        let found = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&KeyRef { channel, id }));
        match found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    /// Remembers where a registered message lives.
    pub fn insert(&self, channel: Channel, id: &str, found: MessageRef) {
        if let Some(cache) = &self.cache {
            cache.insert(
                Key {
                    channel,
                    id: id.into(),
                },
                found,
            );
        }
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// Tells whether it holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(message_pk: i64) -> MessageRef {
        MessageRef {
            message_pk,
            campaign_pk: 7,
        }
    }

    #[test]
    fn finds_what_it_was_told_by_channel_and_id() {
        let directory = Directory::new(100, Metrics::new());
        assert_eq!(directory.get(Channel::Whatsapp, "wamid.1"), None);
        directory.insert(Channel::Whatsapp, "wamid.1", at(1));
        assert_eq!(directory.get(Channel::Whatsapp, "wamid.1"), Some(at(1)));
        assert_eq!(
            directory.get(Channel::Email, "wamid.1"),
            None,
            "another channel"
        );
        assert_eq!(directory.get(Channel::Whatsapp, "wamid.2"), None);
    }

    #[test]
    fn stays_within_its_capacity() {
        let directory = Directory::new(1_000, Metrics::new());
        for n in 0..10_000 {
            directory.insert(Channel::Whatsapp, &format!("wamid.{n}"), at(n));
        }
        assert!(directory.len() <= 1_000, "{} ids", directory.len());
        let off = Directory::new(0, Metrics::new());
        off.insert(Channel::Whatsapp, "wamid.1", at(1));
        assert!(off.is_empty() && off.get(Channel::Whatsapp, "wamid.1").is_none());
    }
}
