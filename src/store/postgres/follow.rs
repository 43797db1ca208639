//! Following the store: how an instance learns of changes committed by any
//! instance (itself included), in an order every subscriber can rely on.
//!
//! The committed rows are the outbox: `campaign_changes` (each campaign's
//! counters after a commit) and `status_events`. A commit that changes
//! counters sends one `NOTIFY` (an empty wake-up, never the change), and
//! each instance's [`ChangeFeed`] LISTENs, then re-reads from its cursor.
//! Notifications are lost while the listening connection is down, so the
//! feed also re-reads after every reconnect and on a periodic poll.
//!
//! # Commit order
//!
//! A sequence value is not commit order: a transaction holding event id 100
//! can commit after one holding 101 was read, and a reader that asks for
//! `id > 101` next time skips 100 for good. So rows carry the id of the
//! transaction that wrote them (`xact`), and a reader only takes rows of
//! transactions below the oldest one still in flight,
//! `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below it
//! has ended, so nothing can appear there later. The cursor is a
//! transaction id: everything below it has been handed on. Rows are handed
//! on in `(xact, id)` order; tenant streams use that pair as their position.
//! Per campaign this order is also version order, because a commit takes
//! its campaigns' locks before its transaction id exists
//! (`super::tx::PgTx::lock`).
//!
//! The cost: a transaction that stays open anywhere in the cluster (a
//! long migration, a session idle in a transaction) holds fan-out back
//! until it ends. statushub's own transactions last milliseconds, and its
//! connections set `idle_in_transaction_session_timeout`. While committed
//! changes wait behind one ([`ChangeFeed::held_back`]), the follower reads
//! again every few tens of milliseconds rather than at its next poll: the
//! transaction may end without a wake-up.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::domain::CampaignCounters;
use crate::store::batch::StatusChange;
use crate::store::types::StoreError;

use super::rows::{counter_row, status_change};
use super::tx::CHANGES_CHANNEL;

/// Most outbox rows read per page; a page holds whole transactions.
const PAGE_ROWS: i64 = 2_000;

/// Changes committed since the previous page, in commit-safe order.
#[derive(Debug, Default)]
pub struct ChangePage {
    /// Each changed campaign's counters after the page's last commit.
    pub campaigns: Vec<(i64, CampaignCounters)>,
    /// The page's status changes, in `(xact, event_id)` order.
    pub changes: Vec<StatusChange>,
}

/// What opens a [`ChangeFeed`]: the feed holds connections of its own, so
/// it can run on a runtime of its own (see `crate::hub::follower`).
#[derive(Clone, Debug)]
pub struct FeedOpener {
    pub(super) options: PgConnectOptions,
    pub(super) acquire_timeout: Duration,
}

impl FeedOpener {
    /// Connects (one connection to LISTEN, one to read) and starts
    /// following from now: changes committed before are history (streams
    /// replay it from the store).
    pub async fn open(self) -> Result<ChangeFeed, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(self.options)
            .await?;
        ChangeFeed::start(pool).await
    }
}

/// One instance's view of every change committed to the store.
#[derive(Debug)]
pub struct ChangeFeed {
    pool: PgPool,
    listener: Option<PgListener>,
    /// Every change of a transaction below this id has been handed on.
    cursor: i64,
}

/// Returns the oldest transaction id still in flight in the cluster.
pub(super) async fn horizon(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?,
    )
}

impl ChangeFeed {
    async fn start(pool: PgPool) -> Result<Self, StoreError> {
        let cursor = horizon(&pool).await?;
        let mut feed = ChangeFeed {
            pool,
            listener: None,
            cursor,
        };
        feed.connect().await;
        Ok(feed)
    }

    /// Closes the feed's connections.
    pub async fn close(mut self) {
        if let Some(listener) = self.listener.take() {
            drop(listener);
        }
        self.pool.close().await;
    }

    /// Opens the listening connection, if it can; the poll covers the time
    /// it cannot.
    async fn connect(&mut self) {
        let listener = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(error = %error, "cannot LISTEN for changes; polling until it can");
                self.listener = None;
            }
        }
    }

    /// Waits until there may be something new: a notification, a
    /// reconnect of the listening connection (notifications sent while it
    /// was down are lost), or `poll` passing.
    pub async fn wait(&mut self, poll: Duration) {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(poll).await;
            self.connect().await;
            return;
        };
        match tokio::time::timeout(poll, listener.try_recv()).await {
            // A wake-up: take every other one already buffered with it.
            Ok(Ok(Some(_))) => while listener.next_buffered().is_some() {},
            // The connection was lost; the next `try_recv` reconnects.
            Ok(Ok(None)) => tracing::warn!("the LISTEN connection was lost; re-reading the outbox"),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN failed; polling until it reconnects");
                self.listener = None;
            }
            Err(_poll_passed) => {}
        }
    }

    /// Tells whether changes committed at or after the cursor wait unread:
    /// a transaction still in flight holds the horizon below them (see the
    /// module docs). One index probe of the outbox.
    pub async fn held_back(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM campaign_changes WHERE xact >= $1)")
                .bind(self.cursor)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Reads the next page of committed changes; `None` when caught up.
    pub async fn next_page(&mut self) -> Result<Option<ChangePage>, StoreError> {
        let horizon = horizon(&self.pool).await?;
        if horizon <= self.cursor {
            return Ok(None);
        }
        let mut rows = sqlx::query(
            "SELECT c.*, k.tenant_id, k.campaign_id FROM campaign_changes c
             JOIN campaigns k ON k.id = c.campaign_pk
             WHERE c.xact >= $1 AND c.xact < $2 ORDER BY c.xact, c.id LIMIT $3",
        )
        .bind(self.cursor)
        .bind(horizon)
        .bind(PAGE_ROWS)
        .fetch_all(&self.pool)
        .await?;
        // A full page may end inside a transaction: stop before that
        // transaction, or, if the page is that one transaction, read all
        // of it.
        let mut upper = horizon;
        if rows.len() as i64 == PAGE_ROWS {
            let last: i64 = rows
                .last()
                .map(|row| row.try_get("xact"))
                .transpose()?
                .unwrap_or(horizon);
            if last > self.cursor {
                upper = last;
                rows.retain(|row| row.try_get::<i64, _>("xact").is_ok_and(|xact| xact < last));
            } else {
                upper = last + 1;
                rows = sqlx::query(
                    "SELECT c.*, k.tenant_id, k.campaign_id FROM campaign_changes c
                     JOIN campaigns k ON k.id = c.campaign_pk
                     WHERE c.xact = $1 ORDER BY c.id",
                )
                .bind(last)
                .fetch_all(&self.pool)
                .await?;
            }
        }
        let events = sqlx::query(
            "SELECT e.id, e.xact, e.campaign_pk, e.campaign_version, m.channel,
                    m.provider_message_id, e.event, e.message_status, e.provider_ts
             FROM status_events e JOIN messages m ON m.id = e.message_pk
             WHERE e.xact >= $1 AND e.xact < $2 AND e.campaign_version IS NOT NULL
             ORDER BY e.xact, e.id",
        )
        .bind(self.cursor)
        .bind(upper)
        .fetch_all(&self.pool)
        .await?;
        self.cursor = upper;
        let mut latest: HashMap<i64, CampaignCounters> = HashMap::new();
        let mut order: Vec<i64> = Vec::new();
        for row in &rows {
            let counters = counter_row(row)?;
            let tenant_id: String = row.try_get("tenant_id")?;
            let campaign_id: String = row.try_get("campaign_id")?;
            let named = counters.named(&tenant_id, &campaign_id);
            match latest.get(&counters.campaign_pk) {
                Some(held) if held.version >= named.version => {}
                Some(_) => {
                    latest.insert(counters.campaign_pk, named);
                }
                None => {
                    order.push(counters.campaign_pk);
                    latest.insert(counters.campaign_pk, named);
                }
            }
        }
        let campaigns = order
            .into_iter()
            .filter_map(|campaign_pk| latest.remove(&campaign_pk).map(|c| (campaign_pk, c)))
            .collect();
        let changes = events
            .iter()
            .map(status_change)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ChangePage { campaigns, changes }))
    }
}
