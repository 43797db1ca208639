//! What the store needs to know to open a database: its own settings, which
//! the command line fills in (`crate::config`) and the store reads; the store
//! imports nothing from the configuration.

use std::time::Duration;

/// How a store opens its database.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// `sqlite://…` (embedded, one process) or `postgres://…` (several
    /// instances may share it).
    pub url: String,
    /// SQLite's durability mode; PostgreSQL's is the server's
    /// `synchronous_commit`.
    pub sqlite_synchronous: Synchronous,
    /// Connections that serve reads (routing, API, debug page, streams'
    /// replays). Writes use one more: the DB actor commits one batch at a
    /// time. PostgreSQL uses one more again to LISTEN.
    pub read_connections: u32,
    /// How long a read waits for a free connection before failing (503).
    pub acquire_timeout: Duration,
    /// The SQLite writer's page cache, MiB (readers get a quarter each).
    pub sqlite_cache_mib: u32,
    /// Most rows in one transaction: the SQLite writer merges the batches
    /// that queued while it committed up to this (`STATUSHUB_MAX_BATCH`).
    pub max_commit_rows: usize,
}

impl StoreSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        StoreSettings {
            url: url.into(),
            sqlite_synchronous: Synchronous::Full,
            read_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            sqlite_cache_mib: 16,
            max_commit_rows: 2_000,
        }
    }

    /// Which backend the URL names, if any.
    pub fn backend(&self) -> Option<Backend> {
        if self.url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if self.url.starts_with("postgres:") || self.url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The database behind a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The name shown in `/webhooks/health` and on the debug page.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// SQLite durability mode: `full` (a commit survives power loss) or
/// `normal` (a commit survives a crash of the process, not of the machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    Full,
    Normal,
}
