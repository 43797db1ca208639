//! `TestDb`: the database under a test hub, seen from the test and not
//! through statushub's code: an independent recount, row counts, and a way to
//! break the store and mend it.
//!
//! Every query here is written once, in SQL that SQLite and PostgreSQL both
//! run (`CASE WHEN`, integer bit tests such as `(seen & 4) <> 0`, `$n`
//! parameters, no backend-only functions), so the suites that use these
//! helpers run unchanged on either backend.
//!
//! The backend of the suites is chosen in one place, [`TestDb::fresh_in`],
//! from `STATUSHUB_TEST_BACKEND` (`sqlite`, the default, or `postgres`). On
//! PostgreSQL every test gets a database of its own, created on the server
//! named by `STATUSHUB_TEST_POSTGRES_URL` (an admin URL: the tests create
//! and drop databases there) and dropped when the test's last [`TestDb`]
//! clone goes. `scripts/test` sets that variable, starting a throwaway
//! server when none is given.
//!
//! This file is self-contained (it depends on no other test module), so
//! `tests/store_suite.rs` includes it too.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Column as _, Connection as _, Row as _, TypeInfo as _};

/// Which backend the suites run on: `sqlite` (default when unset or empty)
/// or `postgres`. Read by [`TestDb::fresh_in`].
pub const BACKEND_VAR: &str = "STATUSHUB_TEST_BACKEND";

/// An admin URL of a PostgreSQL server where the tests may `CREATE` and
/// `DROP DATABASE`, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_VAR: &str = "STATUSHUB_TEST_POSTGRES_URL";

/// The database a test hub runs on. Cheap to clone: it holds where the
/// database is (and, for a database the test created, a shared guard that
/// drops it), and opens a short-lived connection per call.
#[derive(Clone, Debug)]
pub enum TestDb {
    /// A SQLite file, the embedded default.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database.
    Postgres {
        /// `postgres://…/name`: the `DATABASE_URL` a hub opens it with.
        url: String,
        /// The database's name.
        name: String,
        /// A URL of the same server, on another database, with the rights
        /// to alter and drop this one and end its sessions:
        /// `STATUSHUB_TEST_POSTGRES_URL` when set, else `url` on database
        /// `postgres`.
        admin_url: String,
        /// Drops the database when the last clone of this `TestDb` goes;
        /// `None` for a database the test did not create
        /// ([`TestDb::from_url`]).
        guard: Option<Arc<PgDatabaseGuard>>,
    },
}

/// Drops a test's PostgreSQL database (`DROP DATABASE … WITH (FORCE)`,
/// ending the sessions still on it) when dropped. Errors go to stderr: a
/// drop never panics. Held in an `Arc` by every clone of its [`TestDb`].
#[derive(Debug)]
pub struct PgDatabaseGuard {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabaseGuard {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = on_own_runtime(move || async move {
            let mut connection = pg_connect(&admin_url, None, &[]).await?;
            let statement = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            );
            sqlx::query(&statement)
                .execute(&mut connection)
                .await
                .map_err(|error| format!("{statement}: {error}"))?;
            connection.close().await.ok();
            Ok(())
        });
        if let Err(error) = dropped {
            eprintln!(
                "statushub tests: the test database {} was not dropped: {error}",
                self.name
            );
        }
    }
}

/// Runs the future `work` makes on a new thread with a current-thread tokio
/// runtime of its own, and waits for it: sync code (constructors, `Drop`)
/// can then talk to PostgreSQL, from inside a test's runtime or not.
fn on_own_runtime<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = Result<T, String>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start a tokio runtime: {error}"))?;
        runtime.block_on(work())
    })
    .join()
    .unwrap_or_else(|_| Err("the thread talking to PostgreSQL panicked".to_owned()))
}

/// Opens a connection to `url` (to database `database` instead of the URL's
/// when given), with server settings `settings` for its session.
async fn pg_connect(
    url: &str,
    database: Option<&str>,
    settings: &[(&str, &str)],
) -> Result<PgConnection, String> {
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|error| format!("not a PostgreSQL URL, {}: {error}", redact(url)))?
        .application_name("statushub-tests")
        .options(settings.iter().copied());
    if let Some(database) = database {
        options = options.database(database);
    }
    PgConnection::connect_with(&options)
        .await
        .map_err(|error| format!("cannot connect to {}: {error}", redact(url)))
}

/// Returns `url` with its password, if any, replaced by `***`, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |at| scheme_end + at);
    let authority = &url[scheme_end..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        _ => url.to_owned(),
    }
}

/// Returns `url` naming database `name` instead of its own (query kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |at| at + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    let mut renamed = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        renamed.push('?');
        renamed.push_str(query);
    }
    renamed
}

/// Quotes a PostgreSQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Returns `STATUSHUB_TEST_POSTGRES_URL`; panics, saying how to run the
/// tests, when it is not set. Tests never skip for want of a server.
pub fn postgres_server_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set, and this test needs a PostgreSQL server. Run the \
             tests with scripts/test, which uses the server named by {POSTGRES_URL_VAR} or \
             starts a throwaway one of its own, or set {POSTGRES_URL_VAR} to an admin URL of \
             a server where the tests may create and drop databases, e.g. \
             {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres cargo test"
        ),
    }
}

/// Returns a database name no other test, run or process on the server
/// uses: `statushub_t_<pid>_<counter>_<random hex>`.
fn unique_database_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "statushub_t_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Binds `binds` to `query`, in order (the same code for every backend).
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                Bind::Int(value) => query.bind(*value),
                Bind::Text(value) => query.bind(value.clone()),
            };
        }
        query
    }};
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

/// Decodes a SQLite row into named cells.
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

/// Decodes a PostgreSQL row into named cells, by column type: int2, int4
/// and int8 as `Int`, bool as `Int` 0 or 1, text, varchar, bpchar and name
/// as `Text`, NULL as `Null`. Any other type panics: cast it in the SQL.
fn pg_row(row: &sqlx::postgres::PgRow, sql: &str) -> Row {
    let cell = |column: &sqlx::postgres::PgColumn| {
        match column.type_info().name() {
            "INT8" => pg_get::<i64>(row, column, sql).map(Cell::Int),
            "INT4" => pg_get::<i32>(row, column, sql).map(|value| Cell::Int(value.into())),
            "INT2" => pg_get::<i16>(row, column, sql).map(|value| Cell::Int(value.into())),
            "BOOL" => pg_get::<bool>(row, column, sql).map(|value| Cell::Int(value.into())),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                pg_get::<String>(row, column, sql).map(Cell::Text)
            }
            other => panic!(
                "{sql}: column {} is of type {other}, which TestDb does not decode: cast it \
                 to bigint or text in the SQL",
                column.name()
            ),
        }
        .unwrap_or(Cell::Null)
    };
    Row(row
        .columns()
        .iter()
        .map(|column| (column.name().to_owned(), cell(column)))
        .collect())
}

/// Decodes one column of a PostgreSQL row as a `T`, `None` for NULL.
fn pg_get<T>(row: &sqlx::postgres::PgRow, column: &sqlx::postgres::PgColumn, sql: &str) -> Option<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get::<Option<T>, _>(column.ordinal())
        .unwrap_or_else(|error| panic!("{sql}: column {}: {error}", column.name()))
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

/// The name of the triggers (and, on PostgreSQL, of the trigger function)
/// that refuse writes during [`TestDb::refuse_writes`].
const REFUSE_WRITES: &str = "statushub_test_refuse_writes";

/// The error a refused write raises.
const WRITES_REFUSED: &str = "statushub test outage: writes refused";

/// A broken store; see [`TestDb::outage`], [`TestDb::refuse_writes`] and
/// [`TestDb::refuse_connections`]. Mend it with [`Outage::end`].
#[derive(Debug)]
#[must_use = "an outage lasts until `end` is called"]
pub struct Outage {
    db: TestDb,
    kind: OutageKind,
}

/// How the store was broken, with what `end` needs to mend it.
#[derive(Debug)]
enum OutageKind {
    /// Every hub table renamed away ([`TestDb::outage`]).
    TablesAway(Vec<String>),
    /// Triggers refuse writes to these tables ([`TestDb::refuse_writes`]).
    WritesRefused(Vec<String>),
    /// The PostgreSQL database refuses connections
    /// ([`TestDb::refuse_connections`]).
    ConnectionsRefused,
}

impl Outage {
    /// Brings the store back as it was.
    pub async fn end(self) {
        match (&self.kind, &self.db) {
            (OutageKind::TablesAway(tables), _) => {
                let statements: Vec<String> = tables
                    .iter()
                    .map(|table| format!("ALTER TABLE {table}{OUTAGE_SUFFIX} RENAME TO {table}"))
                    .collect();
                self.db.administer(&statements).await;
            }
            (OutageKind::WritesRefused(tables), TestDb::Sqlite { .. }) => {
                let statements: Vec<String> = tables
                    .iter()
                    .flat_map(|table| {
                        ["insert", "update", "delete"]
                            .map(|event| format!("DROP TRIGGER {REFUSE_WRITES}_{event}_{table}"))
                    })
                    .collect();
                self.db.administer(&statements).await;
            }
            (OutageKind::WritesRefused(_), TestDb::Postgres { .. }) => {
                // The triggers go with their function.
                self.db
                    .administer(&[format!("DROP FUNCTION {REFUSE_WRITES}() CASCADE")])
                    .await;
            }
            (OutageKind::ConnectionsRefused, TestDb::Postgres { name, .. }) => {
                self.db
                    .on_admin(&format!(
                        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                        quote_ident(name)
                    ))
                    .await;
            }
            (OutageKind::ConnectionsRefused, TestDb::Sqlite { .. }) => {
                unreachable!("a SQLite database never refuses connections")
            }
        }
    }
}

impl TestDb {
    /// A SQLite database in the file at `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        TestDb::Sqlite { path: path.into() }
    }

    /// The SQLite database of a test in `dir` (what [`TestDb::fresh_in`]
    /// returns on the SQLite backend).
    pub fn sqlite_in(dir: &Path) -> Self {
        TestDb::sqlite(dir.join("statushub.db"))
    }

    /// The fresh database of one test, on the backend `STATUSHUB_TEST_BACKEND`
    /// names: `sqlite` (default, when unset or empty), a file in `dir`; or
    /// `postgres`, a new database of its own (see
    /// [`TestDb::postgres_fresh`]; `dir` is then unused). The one place the
    /// backend of the suites is chosen. Keep the returned value (or a clone)
    /// for as long as the test uses the database: on PostgreSQL the last
    /// clone to go drops it.
    pub fn fresh_in(dir: &Path) -> Self {
        match std::env::var(BACKEND_VAR).as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("" | "sqlite") => TestDb::sqlite_in(dir),
            Ok("postgres" | "postgresql") => TestDb::postgres_fresh(),
            Ok(other) => panic!("{BACKEND_VAR}={other}: expected sqlite or postgres"),
            Err(error) => panic!("{BACKEND_VAR}: {error}"),
        }
    }

    /// A new, empty PostgreSQL database, whatever `STATUSHUB_TEST_BACKEND`
    /// says (for tests about PostgreSQL itself): created on the server named
    /// by `STATUSHUB_TEST_POSTGRES_URL` (panics, saying how to run the tests,
    /// when it is not set), with a name no one else uses, and dropped
    /// (`WITH (FORCE)`) when the last clone of the returned value goes.
    ///
    /// Sync, so callers need no runtime: the `CREATE DATABASE` runs on a
    /// short-lived thread with a runtime of its own.
    pub fn postgres_fresh() -> Self {
        let admin_url = postgres_server_url();
        let name = unique_database_name();
        let created = {
            let admin_url = admin_url.clone();
            let statement = format!("CREATE DATABASE {}", quote_ident(&name));
            on_own_runtime(move || async move {
                let mut connection = pg_connect(&admin_url, None, &[]).await?;
                sqlx::query(&statement)
                    .execute(&mut connection)
                    .await
                    .map_err(|error| format!("{statement}: {error}"))?;
                connection.close().await.ok();
                Ok(())
            })
        };
        if let Err(error) = created {
            panic!(
                "cannot create a test database on {POSTGRES_URL_VAR}={}: {error}",
                redact(&admin_url)
            );
        }
        TestDb::Postgres {
            url: with_database(&admin_url, &name),
            guard: Some(Arc::new(PgDatabaseGuard {
                admin_url: admin_url.clone(),
                name: name.clone(),
            })),
            name,
            admin_url,
        }
    }

    /// The database a hub with `database_url` uses: a SQLite file
    /// (`sqlite://…`, `sqlite:…`) or a PostgreSQL database (`postgres://…`,
    /// `postgresql://…`). The value does not own the database: nothing is
    /// dropped when it goes.
    pub fn from_url(database_url: &str) -> Self {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            let name = PgConnectOptions::from_str(database_url)
                .unwrap_or_else(|error| panic!("{}: {error}", redact(database_url)))
                .get_database()
                .unwrap_or_else(|| panic!("{}: names no database", redact(database_url)))
                .to_owned();
            let admin_url = match std::env::var(POSTGRES_URL_VAR) {
                Ok(url) if !url.is_empty() => url,
                _ => with_database(database_url, "postgres"),
            };
            return TestDb::Postgres {
                url: database_url.to_owned(),
                name,
                admin_url,
                guard: None,
            };
        }
        let path = database_url
            .strip_prefix("sqlite://")
            .or_else(|| database_url.strip_prefix("sqlite:"))
            .unwrap_or_else(|| panic!("no test database for {}", redact(database_url)));
        let path = path.split('?').next().unwrap_or(path);
        TestDb::sqlite(path)
    }

    /// Returns the `DATABASE_URL` a hub uses to open this database.
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path } => format!("sqlite://{}", path.display()),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }

    /// The SQLite file, `None` on PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            TestDb::Sqlite { path } => Some(path),
            TestDb::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL database's name, `None` on SQLite.
    pub fn postgres_name(&self) -> Option<&str> {
        match self {
            TestDb::Sqlite { .. } => None,
            TestDb::Postgres { name, .. } => Some(name),
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
                let rows = bind_all!(sqlx::query(sql), binds)
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|error| panic!("{sql}: {error}"));
                pool.close().await;
                rows.iter().map(|row| sqlite_row(row, sql)).collect()
            }
            TestDb::Postgres { url, .. } => {
                let mut connection =
                    pg_connect(url, None, &[("default_transaction_read_only", "on")])
                        .await
                        .unwrap_or_else(|error| panic!("{error}"));
                let rows = bind_all!(sqlx::query(sql), binds)
                    .fetch_all(&mut connection)
                    .await
                    .unwrap_or_else(|error| panic!("{sql}: {error}"));
                connection.close().await.ok();
                rows.iter().map(|row| pg_row(row, sql)).collect()
            }
        }
    }

    /// Marks messages as the analytics migration (`sqlite/0005`,
    /// `postgres/0004`) marks those it finds: stored before the analytics
    /// tables existed, so never counted in them.
    pub async fn mark_before_analytics(&self, ids: &[&str]) {
        let statements: Vec<String> = ids
            .iter()
            .map(|id| {
                // `(1 = 1)` is true in both dialects' boolean columns.
                format!(
                    "UPDATE messages SET before_analytics = (1 = 1) WHERE provider_message_id = '{}'",
                    id.replace('\'', "''")
                )
            })
            .collect();
        self.administer(&statements).await;
    }

    /// Runs `statements` in one transaction on a writable connection of the
    /// test's own, waiting (up to 30 s) for the hub's writer if it holds a
    /// lock the statements need.
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
                let mut tx = pool.begin().await.expect("begin a transaction");
                for statement in statements {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
                tx.commit().await.expect("commit");
                pool.close().await;
            }
            TestDb::Postgres { url, .. } => {
                // Foreign keys and renames follow tables by oid: renaming
                // back restores the schema exactly.
                let mut connection = pg_connect(url, None, &[("lock_timeout", "30s")])
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let mut tx = connection.begin().await.expect("begin a transaction");
                for statement in statements {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
                tx.commit().await.expect("commit");
                connection.close().await.ok();
            }
        }
    }

    /// Runs `statement` on the PostgreSQL server's admin connection (on
    /// another database than this one); panics on SQLite or on error.
    async fn on_admin(&self, statement: &str) {
        let TestDb::Postgres { admin_url, .. } = self else {
            panic!("{statement}: not a PostgreSQL database");
        };
        let mut connection = pg_connect(admin_url, None, &[])
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
        connection.close().await.ok();
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

    /// The hub's tables (not the backend's own, nor the migrations' record).
    async fn hub_tables(&self) -> Vec<String> {
        let sql = match self {
            TestDb::Sqlite { .. } => {
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            }
            TestDb::Postgres { .. } => {
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
            }
        };
        let tables: Vec<String> = self
            .fetch(sql, &[])
            .await
            .iter()
            .map(|row| row[0].text().to_owned())
            // SQLite's own tables, and the migrations' record.
            .filter(|name| !name.starts_with("sqlite_") && !name.starts_with("_sqlx"))
            .collect();
        assert!(
            tables.iter().any(|table| table == "messages"),
            "no hub schema to break: {tables:?}"
        );
        tables
    }

    /// Breaks the store under a running hub until [`Outage::end`]: every
    /// table the hub uses is moved away, so each of its reads and writes
    /// fails at once (as with a lost disk or a database that refuses its
    /// queries), while nothing is lost and `end` puts everything back.
    ///
    /// On SQLite, permissions, locks and deleted files do not do this: the
    /// hub's open connections keep reading the file they opened, and in WAL
    /// mode no lock stops a reader. On PostgreSQL the same renames do it too:
    /// statements the hub prepared before are re-planned on their next run
    /// and no longer find their tables (the hub's sessions stay up).
    pub async fn outage(&self) -> Outage {
        let tables = self.hub_tables().await;
        let statements: Vec<String> = tables
            .iter()
            .map(|table| format!("ALTER TABLE {table} RENAME TO {table}{OUTAGE_SUFFIX}"))
            .collect();
        self.administer(&statements).await;
        Outage {
            db: self.clone(),
            kind: OutageKind::TablesAway(tables),
        }
    }

    /// Makes every write to the hub's tables fail, while every read still
    /// works, until [`Outage::end`] (a full disk, a read-only replica after
    /// a failover): each table gets triggers that raise `statushub test
    /// outage: writes refused` before an `INSERT`, `UPDATE` or `DELETE`
    /// (and, on PostgreSQL, `TRUNCATE`; errcode 25006,
    /// read_only_sql_transaction, as a read-only server gives). The hub's
    /// sessions stay up and see the triggers at once.
    ///
    /// On SQLite the triggers are per row: a write that touches no row
    /// still succeeds. On PostgreSQL they are per statement: every write
    /// statement fails. [`TestDb::tamper`] fails too while this lasts.
    pub async fn refuse_writes(&self) -> Outage {
        let tables = self.hub_tables().await;
        let statements: Vec<String> = match self {
            TestDb::Sqlite { .. } => tables
                .iter()
                .flat_map(|table| {
                    ["insert", "update", "delete"].map(|event| {
                        format!(
                            "CREATE TRIGGER {REFUSE_WRITES}_{event}_{table} BEFORE {event} ON {table}
                             BEGIN SELECT RAISE(ABORT, '{WRITES_REFUSED}'); END"
                        )
                    })
                })
                .collect(),
            TestDb::Postgres { .. } => std::iter::once(format!(
                "CREATE FUNCTION {REFUSE_WRITES}() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION '{WRITES_REFUSED}' USING ERRCODE = 'read_only_sql_transaction'; END $$"
            ))
            .chain(tables.iter().map(|table| {
                format!(
                    "CREATE TRIGGER {REFUSE_WRITES} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
                     ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {REFUSE_WRITES}()"
                )
            }))
            .collect(),
        };
        self.administer(&statements).await;
        Outage {
            db: self.clone(),
            kind: OutageKind::WritesRefused(tables),
        }
    }

    /// PostgreSQL only: the database goes away for the hub until
    /// [`Outage::end`], as in a server restart that does not come back:
    /// `ALTER DATABASE … ALLOW_CONNECTIONS false`, then every session on it
    /// is ended ([`TestDb::terminate_connections`]), so the hub's sessions
    /// break and its reconnects are refused. [`TestDb::fetch`] and the other
    /// helpers that connect fail too while this lasts. Panics on SQLite,
    /// which has no connections to refuse: use [`TestDb::outage`].
    pub async fn refuse_connections(&self) -> Outage {
        let TestDb::Postgres { name, .. } = self else {
            panic!(
                "refuse_connections: SQLite has no server to refuse connections; use outage() \
                 (every table away) or refuse_writes()"
            );
        };
        self.on_admin(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote_ident(name)
        ))
        .await;
        self.terminate_connections().await;
        Outage {
            db: self.clone(),
            kind: OutageKind::ConnectionsRefused,
        }
    }

    /// PostgreSQL only: ends every session on this database (the hub's
    /// pool, as a server restart or a network cut would), with
    /// `pg_terminate_backend`, and waits (up to 10 s) until they are gone;
    /// returns how many there were. Nothing stops the hub from connecting
    /// again at once: for an outage that lasts, see
    /// [`TestDb::refuse_connections`]. Panics on SQLite, which has no
    /// sessions to end.
    pub async fn terminate_connections(&self) -> usize {
        let TestDb::Postgres {
            name, admin_url, ..
        } = self
        else {
            panic!("terminate_connections: SQLite has no server sessions to end");
        };
        let mut connection = pg_connect(admin_url, None, &[])
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("listing the sessions on {name}: {error}"));
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid")
            .bind(&pids)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("ending the sessions on {name}: {error}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&pids)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap_or_else(|error| panic!("watching the sessions on {name}: {error}"));
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} sessions on {name} still there 10 s after pg_terminate_backend"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connection.close().await.ok();
        pids.len()
    }

    /// Runs `statements` as the test, in one transaction: for tests that
    /// corrupt a row on purpose to see a check catch it.
    pub async fn tamper(&self, statements: &[&str]) {
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
        self.administer(&statements).await;
    }
}
