//! The SQLite writer: one thread of its own owns the one write connection
//! and runs each group commit from `BEGIN` to `COMMIT` on it.
//!
//! Why a thread and `rusqlite` rather than sqlx's connection: sqlx runs an
//! SQLite connection on a worker thread and sends it every statement
//! through a channel, so a commit of ten statements was ten round trips
//! between threads, each a futex wake-up and sleep. Profiled at saturation,
//! that was half of the hub's CPU (`BENCHMARKS.md`). Here the DB actor hands
//! the whole batch over once and gets the outcome back once; in between,
//! every statement is an in-process call on a prepared statement from the
//! connection's cache (statement texts never change, so nothing is prepared
//! twice). Reads stay on sqlx's pool, which links the same SQLite.
//!
//! The DB actor hands batches over as they come (up to
//! [`COMMITS_IN_FLIGHT`]); the thread commits everything that queued while
//! it was busy in one transaction ([`run`]).
//!
//! The orchestration is still [`commit_in`], shared with PostgreSQL: the
//! [`CommitTx`] methods here are `async` only in signature (they never
//! wait), so the commit future completes on its first poll.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use futures_util::FutureExt as _;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::domain::analytics::{AnalyticsDelta, Pricing};
use crate::domain::{Channel, Failure, Status, StatusSet, StatusUpdate, Tally};
use crate::store::batch::{
    Batch, BatchOutcome, CounterRow, DeadLetter, EventRow, LoadedMessage, NewMessage, PruneTarget,
    RecordReplay, Transaction,
};
use crate::store::commit::{CommitTx, EventIds, OldRow, commit_in};
use crate::store::settings::Synchronous;
use crate::store::types::{MessageRef, ReplayOutcome, StoreError};

use super::BUSY_TIMEOUT;
use super::rows::{mask, parse_channel};

/// How much of the file every connection maps into memory: reads of pages
/// not in the cache are then memory accesses, not `read` system calls.
pub(super) const MMAP_BYTES: i64 = 1 << 30;

/// Prepared statements the connection keeps (a commit uses about 25).
const STATEMENT_CACHE: usize = 64;

/// Batches the DB actor may hand over before the first is committed (see
/// [`crate::store::Store::commits_in_flight`]). The writer merges what
/// queued into its next transaction, up to the most rows a commit holds;
/// the DB actor keeps what is beyond this in its own queue.
pub(crate) const COMMITS_IN_FLIGHT: usize = 64;

/// A batch to commit, with where its outcome goes.
struct CommitJob {
    batch: Arc<Batch>,
    rows: usize,
    now_ms: i64,
    reply: oneshot::Sender<Result<BatchOutcome, StoreError>>,
}

/// What the writer thread is asked to do.
enum Job {
    Commit(CommitJob),
    /// A write that is rolled back: tells whether the file takes writes.
    Probe {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Closes the connection and ends the thread.
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// The handle of the writer thread. Cheap to clone; the thread ends (and
/// closes the connection) when the last handle is dropped or on
/// [`Writer::close`].
#[derive(Clone, Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Opens the write connection on `path` (the migrations have run) and
    /// starts its thread.
    /// `max_rows`: most rows in one transaction (a batch larger than that
    /// goes alone).
    pub(super) fn open(
        path: &Path,
        synchronous: Synchronous,
        cache_kib: i64,
        max_rows: usize,
    ) -> Result<Self, StoreError> {
        let connection = open(path, synchronous, cache_kib)?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || run(connection, queue, max_rows))?;
        Ok(Writer { jobs })
    }

    /// Commits `batch`, in one transaction with the batches queued next to
    /// it (see [`run`]).
    pub(super) async fn commit(
        &self,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        self.submit(batch, now_ms).await
    }

    /// Queues `batch` for the writer now, before returning, and returns
    /// what waits for its outcome: batches reach the writer in the order
    /// this is called, whenever the futures are polled.
    pub(super) fn submit(
        &self,
        batch: Arc<Batch>,
        now_ms: i64,
    ) -> impl Future<Output = Result<BatchOutcome, StoreError>> + Send + 'static {
        let (reply, outcome) = oneshot::channel();
        let sent = self.send(Job::Commit(CommitJob {
            rows: batch.rows(),
            batch,
            now_ms,
            reply,
        }));
        async move {
            sent?;
            outcome.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Writes a mark in a transaction that is rolled back.
    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.send(Job::Probe { reply })?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Closes the connection once the jobs before this one are done.
    pub(super) async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.send(Job::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).map_err(|_| StoreError::Closed)
    }
}

/// Opens and configures the write connection.
/// The page cache (`cache_kib`; SQLite's default is 2 MiB) holds the pages a
/// commit touches at random: the unique indexes' interior and leaf pages
/// (message ids, idempotency keys). Pages it does not hold come from the
/// mapping ([`MMAP_BYTES`]). SQLite walks the cache's hash table at the end
/// of every transaction, so a cache far larger than the working set costs
/// commit time for nothing (measured in `BENCHMARKS.md`).
fn open(path: &Path, synchronous: Synchronous, cache_kib: i64) -> Result<Connection, StoreError> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // `journal_mode` answers with a row; the others answer nothing.
    connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    connection.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA mmap_size = {MMAP_BYTES};",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    ))?;
    Ok(connection)
}

/// The writer thread: jobs in the order they were sent. The batches that
/// queued while a transaction was committing go together in the next one
/// (group commit where the work is): the writer never waits for the DB
/// actor between two commits, and a commit holds everything that arrived
/// during the one before, however the arrivals were spread.
fn run(mut connection: Connection, queue: mpsc::Receiver<Job>, max_rows: usize) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Commit(first) => {
                let mut rows = first.rows;
                let mut jobs = vec![first];
                while let Ok(job) = queue.try_recv() {
                    match job {
                        Job::Commit(more) if rows + more.rows <= max_rows => {
                            rows += more.rows;
                            jobs.push(more);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                commit_jobs(&mut connection, jobs, rows);
            }
            Job::Probe { reply } => {
                let _ = reply.send(probe(&mut connection));
            }
            Job::Close { reply } => {
                drop(connection);
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Commits `jobs` in one transaction and answers each with its own
/// outcome. When that transaction fails and held several batches, each is
/// tried again alone, so that one batch the store refuses does not fail the
/// others with it.
fn commit_jobs(connection: &mut Connection, jobs: Vec<CommitJob>, rows: usize) {
    let started = Instant::now();
    let batches: Vec<&Batch> = jobs.iter().map(|job| &*job.batch).collect();
    // The oldest batch's time: the merged ones arrived after it.
    let now_ms = jobs.first().map_or(0, |job| job.now_ms);
    match commit(connection, &batches, now_ms) {
        Ok(mut outcomes) if outcomes.len() == jobs.len() => {
            if let Some(first) = outcomes.first_mut() {
                first.transaction = Some(Transaction {
                    batches: jobs.len(),
                    rows,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        // Cannot happen (`commit_in` answers one outcome per batch). Were it
        // to, the committed writes are answered as failed: the provider's
        // retry is then a duplicate, nothing is lost.
        Ok(_) => {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Corrupt(
                    "a commit answered a different number of batches".to_owned(),
                )));
            }
        }
        Err(error) if jobs.len() == 1 => {
            if let Some(job) = jobs.into_iter().next() {
                let _ = job.reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, batches = jobs.len(), "a merged commit failed; committing its batches one by one");
            for job in jobs {
                let started = Instant::now();
                let outcome = commit(connection, &[&job.batch], job.now_ms).and_then(|outcomes| {
                    let mut outcome = outcomes.into_iter().next().ok_or_else(|| {
                        StoreError::Corrupt("a commit without an outcome".to_owned())
                    })?;
                    outcome.transaction = Some(Transaction {
                        batches: 1,
                        rows: job.rows,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    Ok(outcome)
                });
                let _ = job.reply.send(outcome);
            }
        }
    }
}

/// One group commit of `batches`. A transaction dropped without `commit`
/// rolls back.
fn commit(
    connection: &mut Connection,
    batches: &[&Batch],
    now_ms: i64,
) -> Result<Vec<BatchOutcome>, StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let outcomes = commit_in(&mut WriteTx(&tx), batches, now_ms)
        .now_or_never()
        .ok_or_else(|| StoreError::Corrupt("an SQLite commit waited".to_owned()))??;
    tx.commit()?;
    Ok(outcomes)
}

/// Checks that the file takes writes (a full disk, a read-only mount or
/// lost permissions fail here), without changing anything.
fn probe(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO store_marks (name, value) VALUES ('ready_probe', 0)
         ON CONFLICT (name) DO UPDATE SET value = value + 1",
        [],
    )?;
    tx.rollback()?;
    Ok(())
}

/// A commit's transaction on the writer connection.
struct WriteTx<'c>(&'c Connection);

/// The columns of a message's state, in [`read_state`]'s order.
const STATE_COLUMNS: &str = "campaign_pk, seen, sent_at, delivered_at, read_at, clicked_at,
     complained_at, failed_at, error_code, error_title, channel, complaint_type,
     pricing_category, pricing_billable, pricing_at, before_analytics IS NULL";

/// A message's state as its row holds it.
struct StateRow {
    campaign_pk: i64,
    seen: i64,
    first: [Option<i64>; 6],
    error_code: Option<String>,
    error_title: Option<String>,
    channel: String,
    complaint_type: Option<String>,
    pricing: Option<Pricing>,
    counted: bool,
}

/// Reads a message's state from a row of [`STATE_COLUMNS`].
fn read_state(row: &rusqlite::Row<'_>) -> rusqlite::Result<StateRow> {
    Ok(StateRow {
        campaign_pk: row.get(0)?,
        seen: row.get(1)?,
        first: [
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
        ],
        error_code: row.get(8)?,
        error_title: row.get(9)?,
        channel: row.get(10)?,
        complaint_type: row.get(11)?,
        pricing: match (
            row.get::<_, Option<String>>(12)?,
            row.get::<_, Option<bool>>(13)?,
            row.get::<_, Option<i64>>(14)?,
        ) {
            (Some(category), Some(billable), Some(at_ms)) => Some(Pricing {
                category,
                billable,
                at_ms,
            }),
            _ => None,
        },
        counted: row.get(15)?,
    })
}

/// The counters columns, in [`read_counters`]'s order.
const COUNTER_COLUMNS: &str = "campaign_pk, version, total, sent, delivered, read, clicked,
     complained, now_pending, now_sent, now_delivered, now_read, now_failed, updated_at";

fn read_counters(row: &rusqlite::Row<'_>) -> rusqlite::Result<CounterRow> {
    Ok(CounterRow {
        campaign_pk: row.get(0)?,
        version: row.get(1)?,
        tally: Tally {
            total: row.get(2)?,
            sent: row.get(3)?,
            delivered: row.get(4)?,
            read: row.get(5)?,
            clicked: row.get(6)?,
            complained: row.get(7)?,
            by_status: [
                row.get(8)?,
                row.get(9)?,
                row.get(10)?,
                row.get(11)?,
                row.get(12)?,
            ],
        },
        updated_at_ms: row.get(13)?,
    })
}

impl CommitTx for WriteTx<'_> {
    async fn lock(&mut self, _: &[i64], _: &[(Channel, &str)]) -> Result<(), StoreError> {
        // One writer connection, and `BEGIN IMMEDIATE`: the transaction
        // excludes every other writer.
        Ok(())
    }

    async fn counter_versions(
        &mut self,
        campaigns: &[i64],
    ) -> Result<HashMap<i64, i64>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT version FROM campaign_counters WHERE campaign_pk = ?1")?;
        let mut versions = HashMap::new();
        for campaign_pk in campaigns {
            if versions.contains_key(campaign_pk) {
                continue;
            }
            let version: Option<i64> = statement
                .query_row([campaign_pk], |row| row.get(0))
                .optional()?;
            if let Some(version) = version {
                versions.insert(*campaign_pk, version);
            }
        }
        Ok(versions)
    }

    async fn ensure_campaign(
        &mut self,
        tenant_id: &str,
        campaign_id: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let tx = self.0;
        tx.prepare_cached(
            "INSERT INTO tenants (id, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![tenant_id, now_ms])?;
        tx.prepare_cached(
            "INSERT INTO campaigns (tenant_id, campaign_id, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![tenant_id, campaign_id, now_ms])?;
        let campaign_pk: i64 = tx
            .prepare_cached("SELECT id FROM campaigns WHERE tenant_id = ?1 AND campaign_id = ?2")?
            .query_row(params![tenant_id, campaign_id], |row| row.get(0))?;
        tx.prepare_cached(
            "INSERT INTO campaign_counters (campaign_pk, updated_at) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![campaign_pk, now_ms])?;
        Ok(campaign_pk)
    }

    async fn insert_messages(
        &mut self,
        campaign_pk: i64,
        messages: &[&NewMessage],
        now_ms: i64,
    ) -> Result<HashSet<(Channel, String)>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient,
                                   created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (channel, provider_message_id) DO NOTHING",
        )?;
        let mut inserted = HashSet::new();
        for message in messages {
            let changed = statement.execute(params![
                campaign_pk,
                message.channel.as_str(),
                message.provider_message_id,
                message.recipient,
                now_ms
            ])?;
            if changed > 0 {
                inserted.insert((message.channel, message.provider_message_id.clone()));
            }
        }
        Ok(inserted)
    }

    async fn find_messages(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<(Channel, String, MessageRef)>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "SELECT id, campaign_pk FROM messages WHERE channel = ?1 AND provider_message_id = ?2",
        )?;
        let mut found = Vec::with_capacity(keys.len());
        for (channel, id) in keys {
            let row: Option<(i64, i64)> = statement
                .query_row(params![channel.as_str(), id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            if let Some((message_pk, campaign_pk)) = row {
                found.push((
                    *channel,
                    (*id).to_owned(),
                    MessageRef {
                        message_pk,
                        campaign_pk,
                    },
                ));
            }
        }
        Ok(found)
    }

    async fn take_unmatched(
        &mut self,
        keys: &[(Channel, &str)],
    ) -> Result<Vec<StatusUpdate>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "DELETE FROM unmatched_statuses WHERE channel = ?1 AND provider_message_id = ?2
             RETURNING id, status_update",
        )?;
        let mut taken: Vec<(i64, String)> = Vec::new();
        for (channel, id) in keys {
            let rows = statement.query_map(params![channel.as_str(), id], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            for row in rows {
                taken.push(row?);
            }
        }
        // Arrival order: the outcome does not depend on it, but the timeline
        // ids then follow arrival.
        taken.sort_by_key(|(id, _)| *id);
        taken
            .into_iter()
            .map(|(_, json)| {
                serde_json::from_str(&json)
                    .map_err(|error| StoreError::Corrupt(format!("buffered update: {error}")))
            })
            .collect()
    }

    async fn insert_unmatched(
        &mut self,
        updates: &[&StatusUpdate],
        now_ms: i64,
    ) -> Result<HashSet<String>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "INSERT INTO unmatched_statuses (idempotency_key, channel, provider_message_id,
                                             status_update, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )?;
        let mut inserted = HashSet::new();
        for update in updates {
            let json = serde_json::to_string(update)
                .map_err(|error| StoreError::Corrupt(format!("unserializable update: {error}")))?;
            let changed = statement.execute(params![
                update.idempotency_key,
                update.channel.as_str(),
                update.provider_message_id,
                json,
                now_ms
            ])?;
            if changed > 0 {
                inserted.insert(update.idempotency_key.clone());
            }
        }
        Ok(inserted)
    }

    async fn insert_dead_letter(
        &mut self,
        letter: &DeadLetter,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO dead_letters (channel, reason, content_type, body, received_at,
                                           verification, verification_detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                letter.channel.as_str(),
                letter.reason,
                letter.content_type,
                letter.body,
                now_ms,
                letter.verification.method(),
                letter.verification.detail(),
            ])?;
        Ok(())
    }

    async fn record_replay(
        &mut self,
        replay: &RecordReplay,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .0
            .prepare_cached(
                "UPDATE dead_letters
                 SET is_open = ?2, replays = replays + 1, replayed_at = ?3, replay_outcome = ?4,
                     replay_error = ?5, replay_received = ?6, replay_applied = ?7,
                     replay_duplicates = ?8, replay_unmatched = ?9
                 WHERE id = ?1",
            )?
            .execute(params![
                replay.id,
                replay.outcome != ReplayOutcome::Applied,
                now_ms,
                replay.outcome.as_str(),
                replay.error,
                replay.received,
                replay.applied,
                replay.duplicates,
                replay.unmatched,
            ])?;
        Ok(changed > 0)
    }

    async fn delete_unmatched_before(
        &mut self,
        older_than_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let removed = self
            .0
            .prepare_cached(
                "DELETE FROM unmatched_statuses WHERE id IN (
                     SELECT id FROM unmatched_statuses WHERE received_at < ?1
                     ORDER BY received_at LIMIT ?2)",
            )?
            .execute(params![older_than_ms, limit])?;
        Ok(removed as u64)
    }

    async fn oldest(&mut self, target: PruneTarget, limit: u32) -> Result<Vec<OldRow>, StoreError> {
        let sql = match target {
            PruneTarget::Events => {
                "SELECT id, received_at, campaign_pk, campaign_version FROM status_events
                 ORDER BY id LIMIT ?1"
            }
            PruneTarget::DeadLetters => {
                "SELECT id, received_at, NULL, NULL FROM dead_letters ORDER BY id LIMIT ?1"
            }
            // Buffered statuses are pruned by age; SQLite keeps no outbox.
            PruneTarget::Unmatched | PruneTarget::Outbox => return Ok(Vec::new()),
        };
        let mut statement = self.0.prepare_cached(sql)?;
        let rows = statement.query_map([limit], |row| {
            let campaign_pk: Option<i64> = row.get(2)?;
            let version: Option<i64> = row.get(3)?;
            Ok(OldRow {
                id: row.get(0)?,
                received_at_ms: row.get(1)?,
                campaign_version: campaign_pk.zip(version),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    async fn delete_through(
        &mut self,
        target: PruneTarget,
        through: i64,
    ) -> Result<u64, StoreError> {
        let sql = match target {
            PruneTarget::Events => "DELETE FROM status_events WHERE id <= ?1",
            PruneTarget::DeadLetters => "DELETE FROM dead_letters WHERE id <= ?1",
            PruneTarget::Unmatched | PruneTarget::Outbox => return Ok(0),
        };
        let removed = self.0.prepare_cached(sql)?.execute([through])?;
        Ok(removed as u64)
    }

    async fn raise_pruned_versions(&mut self, versions: &[(i64, i64)]) -> Result<(), StoreError> {
        let mut statement = self.0.prepare_cached(
            "UPDATE campaign_counters SET pruned_version = MAX(pruned_version, ?1)
             WHERE campaign_pk = ?2",
        )?;
        for (campaign_pk, version) in versions {
            statement.execute(params![version, campaign_pk])?;
        }
        Ok(())
    }

    async fn raise_events_pruned_through(&mut self, through: i64) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO store_marks (name, value) VALUES ('events_pruned_through', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            )?
            .execute([through])?;
        Ok(())
    }

    async fn load_states(
        &mut self,
        message_pks: &[i64],
    ) -> Result<HashMap<i64, LoadedMessage>, StoreError> {
        let mut statement = self.0.prepare_cached(&format!(
            "SELECT {STATE_COLUMNS} FROM messages WHERE id = ?1"
        ))?;
        let mut states = HashMap::with_capacity(message_pks.len());
        for message_pk in message_pks {
            let Some(row) = statement.query_row([message_pk], read_state).optional()? else {
                continue;
            };
            states.insert(
                *message_pk,
                LoadedMessage {
                    campaign_pk: row.campaign_pk,
                    channel: parse_channel(&row.channel)?,
                    set: StatusSet::from_parts(mask(row.seen)?, row.first),
                    failure: row.error_code.map(|code| Failure {
                        code,
                        title: row.error_title.unwrap_or_default(),
                    }),
                    complaint_type: row.complaint_type,
                    pricing: row.pricing,
                    counted: row.counted,
                    dirty: false,
                },
            );
        }
        Ok(states)
    }

    async fn existing_keys(&mut self, keys: &[&str]) -> Result<HashSet<String>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT 1 FROM status_events WHERE idempotency_key = ?1")?;
        let mut existing = HashSet::new();
        for key in keys {
            if statement.exists([key])? {
                existing.insert((*key).to_owned());
            }
        }
        Ok(existing)
    }

    async fn insert_events(
        &mut self,
        events: &[EventRow<'_>],
        now_ms: i64,
    ) -> Result<HashMap<String, EventIds>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "INSERT INTO status_events (idempotency_key, message_pk, campaign_pk, event,
                 status, changed, campaign_version, message_status, provider_ts, details,
                 received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut ids = HashMap::with_capacity(events.len());
        for event in events {
            statement.execute(params![
                event.update.idempotency_key,
                event.message_pk,
                event.campaign_pk,
                event.update.event,
                event.update.status.map(Status::as_str),
                event.changed,
                event.version,
                event.current.as_str(),
                event.update.timestamp_ms,
                event.update.stored_details(),
                now_ms
            ])?;
            ids.insert(
                event.update.idempotency_key.clone(),
                EventIds {
                    event_id: self.0.last_insert_rowid(),
                    xact: 0,
                },
            );
        }
        Ok(ids)
    }

    async fn update_messages(
        &mut self,
        states: &[(i64, &LoadedMessage)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut statement = self.0.prepare_cached(
            "UPDATE messages SET seen = ?2, status = ?3, sent_at = ?4, delivered_at = ?5,
                 read_at = ?6, clicked_at = ?7, complained_at = ?8, failed_at = ?9,
                 error_code = ?10, error_title = ?11, updated_at = ?12,
                 complaint_type = ?13, pricing_category = ?14, pricing_billable = ?15,
                 pricing_at = ?16
             WHERE id = ?1",
        )?;
        for (message_pk, state) in states {
            let first = state.set.first_seen_ms();
            statement.execute(params![
                message_pk,
                i64::from(state.set.mask()),
                state.set.current().as_str(),
                first[0],
                first[1],
                first[2],
                first[3],
                first[4],
                first[5],
                state.failure.as_ref().map(|failure| failure.code.as_str()),
                state.failure.as_ref().map(|failure| failure.title.as_str()),
                now_ms,
                state.complaint_type,
                state
                    .pricing
                    .as_ref()
                    .map(|pricing| pricing.category.as_str()),
                state.pricing.as_ref().map(|pricing| pricing.billable),
                state.pricing.as_ref().map(|pricing| pricing.at_ms),
            ])?;
        }
        Ok(())
    }

    async fn add_to_counters(
        &mut self,
        campaign_pk: i64,
        delta: &Tally,
        versions: i64,
        now_ms: i64,
    ) -> Result<CounterRow, StoreError> {
        let mut statement = self.0.prepare_cached(&format!(
            "UPDATE campaign_counters SET version = version + ?1, total = total + ?2,
                sent = sent + ?3, delivered = delivered + ?4, read = read + ?5,
                clicked = clicked + ?6, complained = complained + ?7,
                now_pending = now_pending + ?8, now_sent = now_sent + ?9,
                now_delivered = now_delivered + ?10, now_read = now_read + ?11,
                now_failed = now_failed + ?12, updated_at = MAX(updated_at, ?13)
             WHERE campaign_pk = ?14 RETURNING {COUNTER_COLUMNS}"
        ))?;
        Ok(statement.query_row(
            params![
                versions,
                delta.total,
                delta.sent,
                delta.delivered,
                delta.read,
                delta.clicked,
                delta.complained,
                delta.by_status[0],
                delta.by_status[1],
                delta.by_status[2],
                delta.by_status[3],
                delta.by_status[4],
                now_ms,
                campaign_pk
            ],
            read_counters,
        )?)
    }

    async fn counters(&mut self, campaign_pk: i64) -> Result<CounterRow, StoreError> {
        let mut statement = self.0.prepare_cached(&format!(
            "SELECT {COUNTER_COLUMNS} FROM campaign_counters WHERE campaign_pk = ?1"
        ))?;
        Ok(statement.query_row([campaign_pk], read_counters)?)
    }

    async fn campaign_names(
        &mut self,
        campaign_pks: &[i64],
    ) -> Result<HashMap<i64, (String, String)>, StoreError> {
        let mut statement = self
            .0
            .prepare_cached("SELECT tenant_id, campaign_id FROM campaigns WHERE id = ?1")?;
        let mut names = HashMap::with_capacity(campaign_pks.len());
        for campaign_pk in campaign_pks {
            let name: Option<(String, String)> = statement
                .query_row([campaign_pk], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            if let Some(name) = name {
                names.insert(*campaign_pk, name);
            }
        }
        Ok(names)
    }

    async fn add_analytics(
        &mut self,
        campaign_pk: i64,
        delta: &AnalyticsDelta,
        version: i64,
    ) -> Result<(), StoreError> {
        let tx = self.0;
        if !delta.minutes.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO campaign_minutes (campaign_pk, minute, sent, delivered, read,
                     clicked, failed, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (campaign_pk, minute) DO UPDATE SET
                     sent = sent + excluded.sent, delivered = delivered + excluded.delivered,
                     read = read + excluded.read, clicked = clicked + excluded.clicked,
                     failed = failed + excluded.failed, version = excluded.version",
            )?;
            for (minute, [sent, delivered, read, clicked, failed]) in &delta.minutes {
                statement.execute(params![
                    campaign_pk,
                    minute,
                    sent,
                    delivered,
                    read,
                    clicked,
                    failed,
                    version
                ])?;
            }
        }
        if !delta.latency.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO campaign_latency (campaign_pk, bin, to_delivered, to_read)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (campaign_pk, bin) DO UPDATE SET
                     to_delivered = to_delivered + excluded.to_delivered,
                     to_read = to_read + excluded.to_read",
            )?;
            for (bin, [to_delivered, to_read]) in &delta.latency {
                statement.execute(params![campaign_pk, bin, to_delivered, to_read])?;
            }
        }
        if !delta.reasons.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO campaign_reasons (campaign_pk, kind, code, title, messages)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (campaign_pk, kind, code, title) DO UPDATE SET
                     messages = messages + excluded.messages",
            )?;
            for (reason, count) in &delta.reasons {
                statement.execute(params![
                    campaign_pk,
                    reason.kind,
                    reason.code,
                    reason.title,
                    count
                ])?;
            }
        }
        if !delta.pricing.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO campaign_pricing (campaign_pk, category, billable, messages)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (campaign_pk, category, billable) DO UPDATE SET
                     messages = messages + excluded.messages",
            )?;
            for ((category, billable), count) in &delta.pricing {
                statement.execute(params![campaign_pk, category, billable, count])?;
            }
        }
        Ok(())
    }

    async fn record_changes(&mut self, _: &[&CounterRow]) -> Result<(), StoreError> {
        // One process owns an SQLite store: its DB actor publishes each
        // commit's changes itself.
        Ok(())
    }
}
