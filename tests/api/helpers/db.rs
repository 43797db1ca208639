//! `TestDb`: the database under a test hub, seen from the test and not
//! through statushub's code: an independent recount, row counts, and a way to
//! break the store and mend it.
//!
//! Every query here is written once, in SQL that SQLite and PostgreSQL both
//! run (`CASE WHEN`, integer bit tests such as `(seen & 4) <> 0`, `$n`
//! parameters, no backend-only functions), so a PostgreSQL backend only adds a
//! [`TestDb`] variant with a connection and an outage of its own; the suites
//! that use these helpers then run unchanged on it.
//!
//! This file is self-contained (it depends on no other test module), so
//! `tests/store_suite.rs` includes it too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Column as _, Row as _};

/// The database a test hub runs on. Cheap to clone: it holds where the
/// database is, and opens a short-lived connection per call.
#[derive(Clone, Debug)]
pub enum TestDb {
    /// A SQLite file, the embedded default.
    Sqlite { path: PathBuf },
}

/// A value bound to a `$n` parameter.
#[derive(Clone, Debug)]
pub enum Bind {
    Int(i64),
    Text(String),
}

/// One column of a fetched row, decoded without knowing the backend's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    /// Returns the integer, or 0 for NULL (an aggregate over no rows).
    pub fn int(&self) -> i64 {
        match self {
            Cell::Int(value) => *value,
            Cell::Null => 0,
            Cell::Text(text) => panic!("expected an integer, got text {text:?}"),
        }
    }

    /// Returns the integer, `None` for NULL.
    pub fn opt_int(&self) -> Option<i64> {
        match self {
            Cell::Null => None,
            other => Some(other.int()),
        }
    }

    /// Returns the text; panics on anything else.
    pub fn text(&self) -> &str {
        match self {
            Cell::Text(text) => text,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The current status of every message, derived from its `seen` mask with
/// the spec's precedence (read, else delivered, else failed, else sent, else
/// pending). Bits of `seen`: sent 1, delivered 2, read 4, clicked 8,
/// complained 16, failed 32.
const DERIVED_STATUS: &str = "CASE WHEN (seen & 4) <> 0 THEN 'read'
                                   WHEN (seen & 2) <> 0 THEN 'delivered'
                                   WHEN (seen & 32) <> 0 THEN 'failed'
                                   WHEN (seen & 1) <> 0 THEN 'sent'
                                   ELSE 'pending' END";

/// 1 when `seen` is a mask of the six statuses closed under the
/// implications (clicked ⇒ read ⇒ delivered ⇒ sent, complained ⇒
/// delivered), else 0.
const CLOSED: &str = "CASE WHEN seen < 0 OR seen > 63
                             OR ((seen & 8) <> 0 AND (seen & 4) = 0)
                             OR ((seen & 4) <> 0 AND (seen & 2) = 0)
                             OR ((seen & 2) <> 0 AND (seen & 1) = 0)
                             OR ((seen & 16) <> 0 AND (seen & 2) = 0)
                           THEN 0 ELSE 1 END";

/// 1 when `seen` is exactly the closure of the statuses that have a first
/// timestamp (the ones a provider reported): no status is seen without a
/// reason, and none has a timestamp without being seen. Else 0.
const EXPLAINED: &str = "CASE WHEN seen = ((CASE WHEN sent_at IS NULL THEN 0 ELSE 1 END)
                                         | (CASE WHEN delivered_at IS NULL THEN 0 ELSE 3 END)
                                         | (CASE WHEN read_at IS NULL THEN 0 ELSE 7 END)
                                         | (CASE WHEN clicked_at IS NULL THEN 0 ELSE 15 END)
                                         | (CASE WHEN complained_at IS NULL THEN 0 ELSE 19 END)
                                         | (CASE WHEN failed_at IS NULL THEN 0 ELSE 32 END))
                              THEN 1 ELSE 0 END";

/// Per message of campaign `$1`: the stored `status` and `seen`, the status
/// derived from `seen`, and the two invariants above.
fn checked_messages() -> String {
    format!(
        "SELECT provider_message_id, channel, seen, status,
                {DERIVED_STATUS} AS derived, {CLOSED} AS closed, {EXPLAINED} AS explained
         FROM messages WHERE campaign_pk = $1"
    )
}

/// The recount of campaign `$1`, in one statement (so one snapshot, even
/// while a hub commits): funnel counts from the seen bits, current-status
/// counts from the derived status and from the stored `status` column, the
/// number of rows that break an invariant, and the stored counters row.
fn recount_sql() -> String {
    let bit =
        |mask: u8| format!("COALESCE(SUM(CASE WHEN (seen & {mask}) <> 0 THEN 1 ELSE 0 END), 0)");
    let derived = |status: &str| {
        format!("COALESCE(SUM(CASE WHEN derived = '{status}' THEN 1 ELSE 0 END), 0)")
    };
    let stored =
        |status: &str| format!("COALESCE(SUM(CASE WHEN status = '{status}' THEN 1 ELSE 0 END), 0)");
    let mut columns = vec!["COUNT(*) AS total".to_owned()];
    for (name, mask) in [
        ("sent", 1),
        ("delivered", 2),
        ("f_read", 4),
        ("clicked", 8),
        ("complained", 16),
    ] {
        columns.push(format!("{} AS {name}", bit(mask)));
    }
    for status in CURRENT {
        columns.push(format!("{} AS now_{status}", derived(status)));
        columns.push(format!("{} AS stored_{status}", stored(status)));
    }
    columns.push(
        "COALESCE(SUM(CASE WHEN status <> derived OR closed = 0 OR explained = 0 THEN 1 ELSE 0 END), 0) AS broken"
            .to_owned(),
    );
    format!(
        "WITH m AS ({}), agg AS (SELECT {} FROM m)
         SELECT agg.*, k.version AS k_version, k.total AS k_total, k.sent AS k_sent,
                k.delivered AS k_delivered, k.read AS k_read, k.clicked AS k_clicked,
                k.complained AS k_complained, k.now_pending AS k_pending, k.now_sent AS k_now_sent,
                k.now_delivered AS k_now_delivered, k.now_read AS k_now_read, k.now_failed AS k_failed
         FROM agg LEFT JOIN campaign_counters k ON k.campaign_pk = $1",
        checked_messages(),
        columns.join(", ")
    )
}

/// One fetched row: its columns by name (and by position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(Vec<(String, Cell)>);

impl std::ops::Index<&str> for Row {
    type Output = Cell;

    fn index(&self, name: &str) -> &Cell {
        self.0
            .iter()
            .find(|(column, _)| column == name)
            .map(|(_, cell)| cell)
            .unwrap_or_else(|| panic!("no column {name} in {self:?}"))
    }
}

impl std::ops::Index<usize> for Row {
    type Output = Cell;

    fn index(&self, index: usize) -> &Cell {
        &self.0[index].1
    }
}

/// Decodes a SQLite row into named cells. (A PostgreSQL twin also tries
/// `i32` and `i16`: its integer columns are typed, SQLite's are not.)
fn sqlite_row(row: &sqlx::sqlite::SqliteRow, sql: &str) -> Row {
    let cell = |index: usize| match row.try_get::<Option<i64>, _>(index) {
        Ok(value) => value.map_or(Cell::Null, Cell::Int),
        Err(_) => row
            .try_get::<Option<String>, _>(index)
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .map_or(Cell::Null, Cell::Text),
    };
    Row(row
        .columns()
        .iter()
        .map(|column| (column.name().to_owned(), cell(column.ordinal())))
        .collect())
}

/// The current statuses, in the order of `by_status`.
const CURRENT: [&str; 5] = ["pending", "sent", "delivered", "read", "failed"];

/// What an independent SQL recount of one campaign found.
#[derive(Clone, Debug)]
pub struct Recount {
    /// The counters as the metrics JSON shapes them (without version and
    /// names): funnel counts from the `seen` bits, `failed` and `by_status`
    /// from the status derived from `seen`.
    pub counts: Value,
    /// `by_status` as the stored `status` column gives it.
    pub stored_by_status: Value,
    /// The stored counters row (the one the hub keeps by deltas and hydrates
    /// from), shaped like `counts` plus `version`; `None` when the campaign
    /// does not exist.
    pub stored_counters: Option<Value>,
    /// Messages whose row breaks an invariant, described (at most 20).
    pub broken: Vec<String>,
    /// How many messages break an invariant.
    pub broken_count: i64,
}

impl Recount {
    /// Panics unless every message row holds (stored status = derived
    /// status, `seen` closed and explained by its timestamps) and the
    /// stored counters row equals the recount; returns the counts.
    pub fn checked(self, what: &str) -> Value {
        assert!(
            self.broken_count == 0,
            "{what}: {} message rows break an invariant: {:#?}",
            self.broken_count,
            self.broken
        );
        assert_eq!(
            self.stored_by_status, self.counts["by_status"],
            "{what}: the stored status column disagrees with the status derived from seen"
        );
        if let Some(stored) = &self.stored_counters {
            let mut stored = stored.clone();
            stored.as_object_mut().unwrap().remove("version");
            assert_eq!(
                stored, self.counts,
                "{what}: the stored counters row disagrees with a recount of the messages"
            );
        }
        self.counts
    }
}

/// Renames a table gets while the store is down.
const OUTAGE_SUFFIX: &str = "__outage";

/// A broken store; see [`TestDb::outage`]. Mend it with [`Outage::end`].
#[derive(Debug)]
#[must_use = "an outage lasts until `end` is called"]
pub struct Outage {
    db: TestDb,
    tables: Vec<String>,
}

impl Outage {
    /// Brings the store back as it was.
    pub async fn end(self) {
        let statements: Vec<String> = self
            .tables
            .iter()
            .map(|table| format!("ALTER TABLE {table}{OUTAGE_SUFFIX} RENAME TO {table}"))
            .collect();
        self.db.administer(&statements).await;
    }
}

impl TestDb {
    /// A SQLite database in the file at `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        TestDb::Sqlite { path: path.into() }
    }

    /// The fresh database of one test, in `dir`. The one place the backend
    /// of the suites is chosen (a PostgreSQL run would create a fresh
    /// database or schema here).
    pub fn fresh_in(dir: &Path) -> Self {
        TestDb::sqlite(dir.join("statushub.db"))
    }

    /// The database a hub with `database_url` uses.
    pub fn from_url(database_url: &str) -> Self {
        let path = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
            .unwrap_or_else(|| panic!("no test database for {database_url}"));
        let path = path.split('?').next().unwrap_or(path);
        TestDb::sqlite(path)
    }

    /// Returns the `DATABASE_URL` a hub uses to open this database.
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path } => format!("sqlite://{}", path.display()),
        }
    }

    /// Returns the rows of `sql` with `binds`, read through a connection of
    /// the test's own (read-only where the backend allows it).
    pub async fn fetch(&self, sql: &str, binds: &[Bind]) -> Vec<Row> {
        match self {
            TestDb::Sqlite { path } => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = match bind {
                        Bind::Int(value) => query.bind(*value),
                        Bind::Text(value) => query.bind(value.clone()),
                    };
                }
                let rows = query
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|error| panic!("{sql}: {error}"));
                pool.close().await;
                rows.iter().map(|row| sqlite_row(row, sql)).collect()
            }
        }
    }

    /// Runs `statements` in one transaction on a writable connection of the
    /// test's own, waiting for the hub's writer if it holds the lock.
    async fn administer(&self, statements: &[String]) {
        match self {
            TestDb::Sqlite { path } => {
                // Foreign keys off and the legacy rename: renaming a table then
                // rewrites no other table's schema, so renaming back restores
                // the schema exactly.
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .foreign_keys(false)
                    .pragma("legacy_alter_table", "ON")
                    .busy_timeout(Duration::from_secs(30));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
                let mut tx = pool.begin().await.unwrap();
                for statement in statements {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
                tx.commit().await.unwrap();
                pool.close().await;
            }
        }
    }

    /// Counts the rows of `table`.
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.fetch(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await[0][0]
            .int()
    }

    /// Counts the statuses buffered for the unregistered message `id` of
    /// `channel`.
    pub async fn buffered(&self, channel: &str, id: &str) -> i64 {
        self.fetch(
            "SELECT COUNT(*) FROM unmatched_statuses WHERE channel = $1 AND provider_message_id = $2",
            &[Bind::Text(channel.to_owned()), Bind::Text(id.to_owned())],
        )
        .await[0][0]
            .int()
    }

    /// Recounts the campaign named `campaign` (in whichever tenant; panics
    /// if two tenants have one of that name: see [`TestDb::recount_in`]).
    pub async fn recount(&self, campaign: &str) -> Recount {
        self.recount_in(None, campaign).await
    }

    /// Recounts campaign `campaign` of `tenant` (any tenant when `None`)
    /// from the messages table, without statushub's code. A campaign that
    /// does not exist counts zero everywhere.
    pub async fn recount_in(&self, tenant: Option<&str>, campaign: &str) -> Recount {
        let campaigns: Vec<i64> = self
            .fetch(
                "SELECT id, tenant_id FROM campaigns WHERE campaign_id = $1",
                &[Bind::Text(campaign.to_owned())],
            )
            .await
            .iter()
            .filter(|row| tenant.is_none_or(|tenant| row[1].text() == tenant))
            .map(|row| row[0].int())
            .collect();
        assert!(
            campaigns.len() <= 1,
            "campaign {campaign} exists in several tenants: name one"
        );
        // A campaign that does not exist has no messages and no counters row.
        let campaign_pk = campaigns.first().copied().unwrap_or(-1);
        let rows = self.fetch(&recount_sql(), &[Bind::Int(campaign_pk)]).await;
        let row = &rows[0];
        let at = |name: &str| row[name].int();
        let counts = json!({
            "total": at("total"), "sent": at("sent"), "delivered": at("delivered"), "read": at("f_read"),
            "failed": at("now_failed"), "clicked": at("clicked"), "complained": at("complained"),
            "by_status": {"pending": at("now_pending"), "sent": at("now_sent"), "delivered": at("now_delivered"),
                          "read": at("now_read"), "failed": at("now_failed")},
        });
        let stored_by_status = json!({
            "pending": at("stored_pending"), "sent": at("stored_sent"), "delivered": at("stored_delivered"),
            "read": at("stored_read"), "failed": at("stored_failed"),
        });
        let stored_counters = row["k_version"].opt_int().map(|version| {
            json!({
                "version": version, "total": at("k_total"), "sent": at("k_sent"), "delivered": at("k_delivered"),
                "read": at("k_read"), "failed": at("k_failed"), "clicked": at("k_clicked"),
                "complained": at("k_complained"),
                "by_status": {"pending": at("k_pending"), "sent": at("k_now_sent"), "delivered": at("k_now_delivered"),
                              "read": at("k_now_read"), "failed": at("k_failed")},
            })
        });
        let broken_count = at("broken");
        let broken = if broken_count == 0 {
            Vec::new()
        } else {
            self.fetch(
                &format!(
                    "SELECT * FROM ({}) m WHERE status <> derived OR closed = 0 OR explained = 0
                     ORDER BY provider_message_id LIMIT 20",
                    checked_messages()
                ),
                &[Bind::Int(campaign_pk)],
            )
            .await
            .iter()
            .map(|row| {
                format!(
                    "{} {}: seen {} status {} derived {} closed {} explained {}",
                    row["channel"].text(),
                    row["provider_message_id"].text(),
                    row["seen"].int(),
                    row["status"].text(),
                    row["derived"].text(),
                    row["closed"].int(),
                    row["explained"].int()
                )
            })
            .collect()
        };
        Recount {
            counts,
            stored_by_status,
            stored_counters,
            broken,
            broken_count,
        }
    }

    /// Breaks the store under a running hub until [`Outage::end`]: every
    /// table the hub uses is moved away, so each of its reads and writes
    /// fails at once (as with a lost disk or a database that refuses its
    /// queries), while nothing is lost and `end` puts everything back.
    ///
    /// On SQLite, permissions, locks and deleted files do not do this: the
    /// hub's open connections keep reading the file they opened, and in WAL
    /// mode no lock stops a reader. A PostgreSQL variant could instead
    /// revoke the hub's role or terminate its sessions.
    pub async fn outage(&self) -> Outage {
        let tables: Vec<String> = match self {
            TestDb::Sqlite { .. } => self
                .fetch(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
                    &[],
                )
                .await
                .iter()
                .map(|row| row[0].text().to_owned())
                // SQLite's own tables, and the migrations' record.
                .filter(|name| !name.starts_with("sqlite_") && !name.starts_with("_sqlx"))
                .collect(),
        };
        assert!(
            tables.iter().any(|table| table == "messages"),
            "no hub schema to break: {tables:?}"
        );
        let statements: Vec<String> = tables
            .iter()
            .map(|table| format!("ALTER TABLE {table} RENAME TO {table}{OUTAGE_SUFFIX}"))
            .collect();
        self.administer(&statements).await;
        Outage {
            db: self.clone(),
            tables,
        }
    }

    /// Runs `statements` as the test, in one transaction: for tests that
    /// corrupt a row on purpose to see a check catch it.
    pub async fn tamper(&self, statements: &[&str]) {
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
        self.administer(&statements).await;
    }
}
