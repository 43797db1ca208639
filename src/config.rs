//! Typed settings, read once from flags and the environment (clap), then
//! completed with generated secrets (see [`crate::secrets`]).
//!
//! No other module reads the environment: everything it needs is passed down
//! from here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

use crate::store::StoreSettings;

pub use crate::secrets::{SecretArgs, Secrets};

/// Flags and environment variables shared by every subcommand that opens the
/// store or needs the secrets.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// `sqlite://…` (default, embedded) or `postgres://…`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://statushub.db")]
    pub database_url: String,

    /// Where generated secrets are kept (file mode 0600).
    #[arg(long, env = "STATUSHUB_DATA_DIR", default_value = ".statushub")]
    pub data_dir: PathBuf,

    /// SQLite `synchronous` mode: `full` (a commit survives power loss) or
    /// `normal` (a commit survives a crash of the process, not of the machine).
    #[arg(long, env = "STATUSHUB_SQLITE_SYNCHRONOUS", default_value = "full")]
    pub sqlite_synchronous: SqliteSynchronous,

    /// Database connections serving reads (routing, API, streams' replays);
    /// writes use one more. On PostgreSQL, each instance opens this plus two
    /// (the writer and the LISTEN connection): size the server's
    /// `max_connections` for every instance.
    #[arg(long, env = "STATUSHUB_DB_READ_CONNECTIONS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_read_connections: u32,

    /// The SQLite writer's page cache, MiB. Every connection also maps up
    /// to 1 GiB of the file, so pages the cache does not hold are read
    /// from memory, not with a system call; the cache costs a little at
    /// every commit (SQLite walks it), so bigger is not always faster.
    #[arg(long, env = "STATUSHUB_SQLITE_CACHE_MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub sqlite_cache_mib: u32,
}

impl StoreArgs {
    /// The store's own settings.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            sqlite_synchronous: self.sqlite_synchronous,
            read_connections: self.db_read_connections,
            sqlite_cache_mib: self.sqlite_cache_mib,
            ..StoreSettings::new(self.database_url.clone())
        }
    }
}

/// SQLite durability mode; see [`StoreArgs::sqlite_synchronous`].
pub use crate::store::Synchronous as SqliteSynchronous;

/// Everything `statushub serve` needs.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Listen address.
    #[arg(long, env = "STATUSHUB_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub secrets: SecretArgs,

    /// Optional shared secret for the SNS endpoint (basic-auth password or `?token=`).
    #[arg(long, env = "SES_WEBHOOK_SECRET", hide_env_values = true)]
    pub ses_webhook_secret: Option<SecretString>,

    /// Comma-separated SNS topic ARNs to accept; empty accepts any.
    #[arg(
        long,
        env = "SNS_TOPIC_ARNS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub sns_topic_arns: Vec<String>,

    /// Directory of pre-provisioned SNS signing certificates.
    #[arg(long, env = "SNS_CERT_DIR")]
    pub sns_cert_dir: Option<PathBuf>,

    /// `false` disables provider signature checks; for local experiments only.
    #[arg(long, env = "ENABLE_WEBHOOK_VERIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_webhook_verification: bool,

    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "STATUSHUB_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Largest accepted `POST /api/v1/messages` body, in bytes.
    #[arg(long, env = "STATUSHUB_API_BODY_LIMIT", default_value_t = 64 * 1024 * 1024)]
    pub api_body_limit: usize,

    /// Most statuses the DB actor commits in one transaction.
    #[arg(long, env = "STATUSHUB_MAX_BATCH", default_value_t = 2_000)]
    pub max_batch: usize,

    /// Most statuses waiting for a commit before webhooks get 503.
    #[arg(long, env = "STATUSHUB_MAX_QUEUE", default_value_t = 50_000)]
    pub max_queue: usize,

    /// Seconds a campaign actor may sit idle before it stops.
    #[arg(long, env = "STATUSHUB_CAMPAIGN_IDLE_SECS", default_value_t = 300)]
    pub campaign_idle_secs: u64,

    /// Message ids whose campaign is remembered in memory, so a webhook for
    /// them needs no database read (about 100 bytes each; 0 turns it off).
    #[arg(
        long,
        env = "STATUSHUB_ID_DIRECTORY_CAPACITY",
        default_value_t = 1_000_000
    )]
    pub id_directory_capacity: usize,

    /// Days a status for an unknown message id is kept waiting for its message.
    #[arg(long, env = "STATUSHUB_UNMATCHED_RETENTION_DAYS", default_value_t = 7)]
    pub unmatched_retention_days: u64,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "STATUSHUB_WORKERS")]
    pub workers: Option<usize>,

    /// Least milliseconds between two `metrics` SSE events of one campaign.
    #[arg(long, env = "STATUSHUB_SSE_COALESCE_MS", default_value_t = 100)]
    pub sse_coalesce_ms: u64,

    /// Seconds between SSE heartbeat comments.
    #[arg(long, env = "STATUSHUB_SSE_HEARTBEAT_SECS", default_value_t = 15)]
    pub sse_heartbeat_secs: u64,

    /// Most status events replayed to a resuming SSE client.
    #[arg(long, env = "STATUSHUB_SSE_REPLAY_LIMIT", default_value_t = 1000)]
    pub sse_replay_limit: u32,

    /// Seconds a whole request (head and body) may take to arrive; 408 and
    /// the connection closed beyond.
    #[arg(long, env = "STATUSHUB_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Most open client connections, in total; lowered at start to stay
    /// below the open-file limit.
    #[arg(long, env = "STATUSHUB_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Most SSE streams open at once, in total.
    #[arg(long, env = "STATUSHUB_MAX_STREAMS", default_value_t = 15_000)]
    pub max_streams: usize,

    /// Most SSE streams one tenant's tokens may hold open at once.
    #[arg(
        long,
        env = "STATUSHUB_MAX_STREAMS_PER_TENANT",
        default_value_t = 1_000
    )]
    pub max_streams_per_tenant: usize,

    /// Most SSE streams one token may hold open at once.
    #[arg(long, env = "STATUSHUB_MAX_STREAMS_PER_TOKEN", default_value_t = 20)]
    pub max_streams_per_token: usize,

    /// Days a timeline event (`status_events` row) is kept; 0 keeps them forever.
    #[arg(long, env = "STATUSHUB_EVENT_RETENTION_DAYS", default_value_t = 90)]
    pub event_retention_days: u64,

    /// Seconds between two retention passes (unmatched statuses, timeline
    /// events, dead letters).
    #[arg(long, env = "STATUSHUB_PRUNE_INTERVAL_SECS", default_value_t = 600)]
    pub prune_interval_secs: u64,

    /// Days a dead letter is kept; 0 keeps them forever.
    #[arg(
        long,
        env = "STATUSHUB_DEAD_LETTER_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub dead_letter_retention_days: u64,
}

/// The validated settings the application is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub bind: SocketAddr,
    /// Which database: `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// SQLite durability: `Full` survives power loss, `Normal` a crash.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Database connections serving reads.
    pub db_read_connections: u32,
    /// The SQLite writer's page cache, MiB.
    pub sqlite_cache_mib: u32,
    /// Where generated secrets are kept.
    pub data_dir: PathBuf,
    /// The four secrets every hub has, checked for strength at start.
    pub secrets: Secrets,
    /// Optional shared secret the email endpoint also requires.
    pub ses_webhook_secret: Option<SecretString>,
    /// SNS topics whose messages are accepted and whose subscriptions are
    /// confirmed automatically; empty accepts any topic and confirms none.
    pub sns_topic_arns: Vec<String>,
    /// Pre-provisioned SNS signing certificates, read before any download.
    pub sns_cert_dir: Option<PathBuf>,
    /// Test-only: sends the `GET` that confirms an SNS subscription to this
    /// base (scheme, host and port) instead of the `SubscribeURL`'s SNS host,
    /// keeping the URL's path and query. The `SubscribeURL` is still
    /// host-validated first, so only a genuine-looking SNS URL is followed.
    ///
    /// No flag or environment variable sets it: [`Settings::from_args`]
    /// always leaves it `None`, so only code that builds `Settings` itself
    /// (the integration tests, pointing it at a local stand-in) can enable
    /// it, and start-up logs a warning when it is set.
    pub sns_subscribe_override: Option<reqwest::Url>,
    /// Test-only: downloads SNS signing certificates that are not in
    /// `sns_cert_dir` from this base (scheme, host and port) instead of the
    /// `SigningCertURL`'s SNS host, keeping the URL's path. The
    /// `SigningCertURL` is still host-validated first, so only a
    /// genuine-looking SNS URL is fetched.
    ///
    /// As for `sns_subscribe_override`, no flag or environment variable sets
    /// it: [`Settings::from_args`] always leaves it `None`, so only code that
    /// builds `Settings` itself (the integration tests, pointing it at a
    /// local stand-in) can enable it, and start-up logs a warning when it is
    /// set.
    pub sns_cert_download_override: Option<reqwest::Url>,
    /// `false` turns provider signature checks off (local experiments only).
    pub enable_webhook_verification: bool,
    /// Largest webhook body, bytes (413 beyond).
    pub body_limit: usize,
    /// Largest registration body, bytes (413 beyond).
    pub api_body_limit: usize,
    /// Most rows in one group commit.
    pub max_batch: usize,
    /// Most rows waiting for a commit before writes get 503.
    pub max_queue: usize,
    /// Idle time after which a campaign actor stops.
    pub campaign_idle: Duration,
    /// Message ids the hub's directory remembers (0: none).
    pub id_directory_capacity: usize,
    /// HTTP worker threads (`None`: one per core).
    pub workers: Option<usize>,
    /// Least time between two `metrics` events of a campaign on a stream.
    pub sse_coalesce: Duration,
    /// Heartbeat comment interval (at most 15 s).
    pub sse_heartbeat: Duration,
    /// Most status events replayed to a resuming stream.
    pub sse_replay_limit: u32,
    /// Time a whole request, body included, may take to arrive.
    pub request_timeout: Duration,
    /// Most open client connections, before the descriptor-limit clamp.
    pub max_connections: usize,
    /// SSE stream caps: in total, per tenant, per token.
    pub stream_limits: StreamLimits,
    /// How long unmatched statuses wait, and how long timeline events and
    /// dead letters are kept (`None`: forever).
    pub retention: Retention,
}

/// Most SSE streams open at once. Beyond any of them a new stream gets 429
/// with `Retry-After`. The admin token counts only toward `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// In total, whoever holds them.
    pub total: usize,
    /// Per tenant, over all its tokens.
    pub per_tenant: usize,
    /// Per token.
    pub per_token: usize,
}

/// How long stored history is kept. Pruning runs in small batches through
/// the DB actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Timeline events (`status_events`); `None` keeps them forever.
    pub events: Option<Duration>,
    /// Dead letters; `None` keeps them forever.
    pub dead_letters: Option<Duration>,
    /// Buffered statuses for unknown message ids.
    pub unmatched: Duration,
    /// Time between two retention passes.
    pub interval: Duration,
}

/// Returns `days` as a retention, `0` meaning forever.
fn retention_days(days: u64) -> Option<Duration> {
    (days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400)))
}

impl Settings {
    /// The store's own settings.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            sqlite_synchronous: self.sqlite_synchronous,
            read_connections: self.db_read_connections,
            sqlite_cache_mib: self.sqlite_cache_mib,
            max_commit_rows: self.max_batch,
            ..StoreSettings::new(self.database_url.clone())
        }
    }

    /// Builds settings from parsed flags, loading or generating secrets.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Self> {
        use anyhow::Context as _;

        let secrets = crate::secrets::load_or_generate(&args.store.data_dir, &args.secrets)
            .context("failed to load or generate secrets")?;
        Self::from_parts(args, secrets)
    }

    /// Builds settings from parsed flags and the secrets to use (checked
    /// again at start; see [`crate::secrets::check_secrets`]).
    pub fn from_parts(args: ServeArgs, secrets: Secrets) -> anyhow::Result<Self> {
        if args.max_batch == 0 || args.max_queue < args.max_batch {
            anyhow::bail!("max_batch must be positive and at most max_queue");
        }
        if let Some(secret) = &args.ses_webhook_secret {
            crate::secrets::check_ses_webhook_secret(secret)?;
        }
        if args.request_timeout_secs == 0 {
            anyhow::bail!("STATUSHUB_REQUEST_TIMEOUT_SECS must be positive");
        }
        Ok(Settings {
            bind: args.bind,
            database_url: args.store.database_url,
            sqlite_synchronous: args.store.sqlite_synchronous,
            db_read_connections: args.store.db_read_connections,
            sqlite_cache_mib: args.store.sqlite_cache_mib,
            data_dir: args.store.data_dir,
            secrets,
            ses_webhook_secret: args.ses_webhook_secret,
            sns_topic_arns: args
                .sns_topic_arns
                .into_iter()
                .map(|arn| arn.trim().to_owned())
                .filter(|arn| !arn.is_empty())
                .collect(),
            sns_cert_dir: args.sns_cert_dir,
            // Deliberately not configurable from outside: see the field's doc.
            sns_subscribe_override: None,
            sns_cert_download_override: None,
            enable_webhook_verification: args.enable_webhook_verification,
            body_limit: args.body_limit,
            api_body_limit: args.api_body_limit,
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            campaign_idle: Duration::from_secs(args.campaign_idle_secs.max(1)),
            id_directory_capacity: args.id_directory_capacity,
            workers: args.workers,
            sse_coalesce: Duration::from_millis(args.sse_coalesce_ms),
            sse_heartbeat: Duration::from_secs(args.sse_heartbeat_secs.clamp(1, 15)),
            sse_replay_limit: args.sse_replay_limit.max(1),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            max_connections: args.max_connections.max(1),
            stream_limits: StreamLimits {
                total: args.max_streams,
                per_tenant: args.max_streams_per_tenant,
                per_token: args.max_streams_per_token,
            },
            retention: Retention {
                events: retention_days(args.event_retention_days),
                dead_letters: retention_days(args.dead_letter_retention_days),
                unmatched: Duration::from_secs(args.unmatched_retention_days * 24 * 3600),
                interval: Duration::from_secs(args.prune_interval_secs.max(1)),
            },
        })
    }
}
