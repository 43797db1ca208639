//! The change follower: on a store that several instances share
//! (PostgreSQL), the one path by which commits (this instance's and every
//! other's) reach this instance's subscribers and campaign actors.
//!
//! One task per instance reads the outbox (see
//! [`crate::store::ChangeFeed`]) when woken, hands each page to the
//! broadcaster once (streams take only the campaigns they follow), and
//! tells running campaign actors of their campaigns' counters, so `GET
//! …/metrics` on any instance follows commits made on any other. No
//! connection polls or reads the database for this.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::broadcast::{Broadcaster, CommitUpdate};
use super::router::{Observe, Router};
use crate::metrics::Metrics;
use crate::store::{ChangeFeed, ChangePage};

/// How often the outbox is read without a wake-up: the bound on how late a
/// change can be when notifications are lost (the listening connection
/// dropped, or is reconnecting).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Starts following `feed` on the current actix system.
pub(super) fn spawn(
    mut feed: ChangeFeed,
    broadcaster: Broadcaster,
    router: Addr<Router>,
    metrics: Metrics,
) {
    actix::spawn(async move {
        loop {
            feed.wait(POLL_INTERVAL).await;
            loop {
                match feed.next_page().await {
                    Ok(Some(page)) => hand_on(page, &broadcaster, &router, &metrics),
                    Ok(None) => break,
                    Err(error) => {
                        metrics.feed_failures.inc();
                        tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "reading the change feed failed; retrying");
                        break;
                    }
                }
            }
        }
    });
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
