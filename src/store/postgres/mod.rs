//! The PostgreSQL backend: several statushub instances over one database.
//!
//! - `mod.rs`: the pools, the commit (retried on serialization failures
//!   and deadlocks) and the reads;
//! - [`tx`]: the statements a commit is made of (the commit itself is
//!   [`crate::store::commit`], shared by every backend), and the locks that
//!   make concurrent commits of several instances safe;
//! - [`follow`]: the outbox every instance follows for fan-out;
//! - [`rows`]: mapping rows to types.

mod analytics;
mod follow;
mod listing;
mod reads;
mod rows;
mod tx;

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::store::batch::{Batch, BatchOutcome};
use crate::store::commit::commit_in;
use crate::store::settings::StoreSettings;
use crate::store::types::StoreError;

pub use follow::{ChangeFeed, ChangePage, FeedOpener};
use tx::PgTx;

/// How many times a commit is tried when PostgreSQL aborts it for a
/// serialization failure or a deadlock (both transient: the next try sees
/// the other transaction's result).
const COMMIT_ATTEMPTS: u32 = 5;

/// Server-side settings of the readers' and the change feed's connections:
/// nothing waits on a lock or runs for long, a connection left inside a
/// transaction is closed, and every statement is planned for its own
/// parameters.
///
/// Why plans need care: sqlx keeps each connection's statements prepared,
/// and after five executions PostgreSQL may switch a prepared statement to
/// a generic plan that it then keeps for the connection's life. A generic
/// plan made while a table was small (a fresh database) reads it by a
/// sequential scan (measured: `UNNEST(…) JOIN messages` as a hash join over
/// a seq scan, `status_events WHERE idempotency_key = ANY($1)` as a filtered
/// seq scan), and stays so while the table grows to millions of rows unless
/// an `ANALYZE` invalidates it, which nothing guarantees (autovacuum may be
/// off, as it is on this project's CI machines). Measured before the fix
/// (BENCHMARKS.md): registering 3,000 campaigns took 67 s instead of 14 s,
/// 10,000 did not finish in ten minutes, and one status per request ran at
/// 2,600/s instead of 7,700/s. Reads plan per execution
/// (`force_custom_plan`: tens of µs, against a request's round trip); the
/// writer keeps generic plans (see [`WRITER_OPTIONS`]).
pub const SESSION_OPTIONS: [(&str, &str); 4] = [
    ("lock_timeout", "10s"),
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
    ("plan_cache_mode", "force_custom_plan"),
];

/// The writer's settings: the bounds of [`SESSION_OPTIONS`], generic plans
/// allowed (the commit's statements never change text, and planning them
/// at each commit costs throughput), but never planned around a sequential
/// scan: every statement of a commit reads by an index.
pub const WRITER_OPTIONS: [(&str, &str); 4] = [
    ("lock_timeout", "10s"),
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
    ("enable_seqscan", "off"),
];

/// The PostgreSQL store. Cloning is cheap (pools are reference-counted).
#[derive(Clone, Debug)]
pub struct PgStore {
    /// Commits: one at a time per instance (the DB actor's).
    writer: PgPool,
    /// Reads.
    reader: PgPool,
    /// How the change feed connects (it has connections of its own);
    /// shared, as the connect options are large.
    feed: std::sync::Arc<FeedOpener>,
}

impl PgStore {
    /// Connects and runs the migrations (several instances starting at once
    /// are fine: sqlx takes an advisory lock around them).
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        let base = PgConnectOptions::from_str(&settings.url)?.application_name("statushub");
        let options = base.clone().options(SESSION_OPTIONS);
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(base.options(WRITER_OPTIONS))
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&writer).await?;
        let reader = PgPoolOptions::new()
            .max_connections(settings.read_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let feed = std::sync::Arc::new(FeedOpener {
            options,
            acquire_timeout: settings.acquire_timeout,
        });
        Ok(PgStore {
            writer,
            reader,
            feed,
        })
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Commits a batch in one transaction; see [`super::Store::commit`].
    /// A serialization failure or deadlock is retried from the start (the
    /// whole batch is recomputed from the rows read then); any other error,
    /// or the last failed try, fails the batch, and nothing of it is
    /// acknowledged.
    pub async fn commit(&self, batch: &Batch, now_ms: i64) -> Result<BatchOutcome, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_commit(batch, now_ms).await {
                Err(StoreError::Database(error))
                    if attempt < COMMIT_ATTEMPTS && is_transient(&error) =>
                {
                    tracing::debug!(error = %error, attempt, "commit aborted; trying again");
                    // Back off a little, more each time, so two instances
                    // that collided do not collide again.
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    let pause = 2_u64.pow(attempt) + jitter;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_commit(&self, batch: &Batch, now_ms: i64) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let outcome = commit_in(&mut PgTx(&mut tx), &[batch], now_ms)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a commit without an outcome".to_owned()))?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Checks the write path as well as the reads: a database that answers
    /// `SELECT 1` but refuses writes (read-only, out of disk, lost
    /// privileges) is not ready. Writes a mark in a transaction that is
    /// rolled back, on the writer's connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(
            "SELECT (SELECT MAX(id) FROM campaigns), (SELECT MAX(id) FROM messages),
                    (SELECT MAX(id) FROM status_events), (SELECT MAX(id) FROM campaign_changes)",
        )
        .execute(&self.reader)
        .await?;
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO store_marks (name, value) VALUES ('ready_probe', 0)
             ON CONFLICT (name) DO UPDATE SET value = store_marks.value + 1",
        )
        .execute(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(())
    }

    /// Returns what opens a feed of every instance's commits.
    pub fn feed_opener(&self) -> FeedOpener {
        FeedOpener::clone(&self.feed)
    }
}

/// Tells whether PostgreSQL aborted a transaction only because of another
/// one: serialization failure (40001) or deadlock (40P01).
fn is_transient(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}
