//! The change follower: on a store that several instances share
//! (PostgreSQL), the one path by which commits (this instance's and every
//! other's) reach this instance's subscribers and campaign actors.
//!
//! One thread per instance reads the outbox (see
//! [`crate::store::ChangeFeed`]) when woken, hands each page to the
//! broadcaster once (streams take only the campaigns they follow), and
//! tells running campaign actors of their campaigns' counters, so `GET
//! …/metrics` on any instance follows commits made on any other. No
//! connection polls or reads the database for this.
//!
//! The feed runs on a thread and runtime of its own, with connections of
//! its own: reading the outbox never competes with webhooks for the
//! actix workers, and the feed's connections are closed on the runtime
//! that opened them when the hub goes away (the router's address
//! disconnects), not dropped half-way by a runtime shutting down.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::oneshot;

use super::broadcast::{Broadcaster, CommitUpdate};
use super::router::{Observe, Router};
use crate::metrics::Metrics;
use crate::store::{ChangePage, FeedOpener, StoreError};

/// How often the outbox is read without a wake-up: the bound on how late a
/// change can be when notifications are lost (the listening connection
/// dropped, or is reconnecting).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How soon the outbox is read again while changes already committed wait
/// behind a transaction still in flight: from the first to the second,
/// doubling. Such a transaction may send no wake-up when it ends (another
/// application's, a migration, a statushub commit that changed no
/// counters); without this, its changes would wait for the next poll.
const HELD_BACK_RETRY: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(50));

/// Starts following the store on a thread of its own; resolves once the
/// feed follows (every commit from then on reaches subscribers).
pub(super) async fn spawn(
    opener: FeedOpener,
    broadcaster: Broadcaster,
    router: Addr<Router>,
    metrics: Metrics,
) -> Result<(), StoreError> {
    let (ready, started) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("statushub-feed".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(StoreError::Io(error)));
                    return;
                }
            };
            runtime.block_on(follow(opener, ready, broadcaster, router, metrics));
        });
    if let Err(error) = thread {
        return Err(StoreError::Io(error));
    }
    started.await.unwrap_or_else(|_| {
        Err(StoreError::Corrupt(
            "the change feed's thread ended before it started".to_owned(),
        ))
    })
}

/// The feed's loop, until the hub goes away.
async fn follow(
    opener: FeedOpener,
    ready: oneshot::Sender<Result<(), StoreError>>,
    broadcaster: Broadcaster,
    router: Addr<Router>,
    metrics: Metrics,
) {
    let mut feed = match opener.open().await {
        Ok(feed) => feed,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut retry: Option<Duration> = None;
    while router.connected() {
        feed.wait(retry.unwrap_or(POLL_INTERVAL)).await;
        let caught_up = loop {
            match feed.next_page().await {
                Ok(Some(page)) => hand_on(page, &broadcaster, &router, &metrics),
                Ok(None) => break true,
                Err(error) => {
                    metrics.feed_failures.inc();
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "reading the change feed failed; retrying");
                    break false;
                }
            }
        };
        // Caught up to the horizon, but not to every commit: look again
        // soon. A failed read waits for the poll.
        let held_back = caught_up && feed.held_back().await.unwrap_or(false);
        retry = held_back.then(|| {
            retry.map_or(HELD_BACK_RETRY.0, |retry| {
                (retry * 2).min(HELD_BACK_RETRY.1)
            })
        });
    }
    feed.close().await;
}

/// Hands a page on to the campaign actors and the streams.
fn hand_on(page: ChangePage, broadcaster: &Broadcaster, router: &Addr<Router>, metrics: &Metrics) {
    if page.campaigns.is_empty() && page.changes.is_empty() {
        return;
    }
    metrics.feed_pages.inc();
    let campaigns: Vec<(i64, Arc<_>)> = page
        .campaigns
        .into_iter()
        .map(|(campaign_pk, counters)| (campaign_pk, Arc::new(counters)))
        .collect();
    for (campaign_pk, counters) in &campaigns {
        router.do_send(Observe {
            campaign_pk: *campaign_pk,
            counters: Arc::clone(counters),
        });
    }
    if broadcaster.has_subscribers() {
        if let Some(update) = CommitUpdate::from_page(campaigns, page.changes) {
            broadcaster.publish(update);
        }
    }
}
