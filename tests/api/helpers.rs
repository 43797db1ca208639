//! `TestApp`: a statushub on 127.0.0.1:0 with a fresh database in a
//! temporary directory, and the one place tests start hubs, talk to them as
//! providers and dashboards do, and look at their database.
//!
//! - starting: [`spawn_app`], [`spawn_app_with`], from [`test_settings`]
//!   (the `serve` defaults, parsed by clap without the environment);
//! - providers: WhatsApp (`post_whatsapp*`, `send_statuses`) and SNS
//!   ([`SnsSigner`], `TestApp::post_sns`), signed as they sign;
//! - dashboards: the API (`register*`, `metrics`, `message`) and SSE
//!   (`TestApp::open_stream`);
//! - the database: [`TestDb`] (independent recount, row counts, outages).

#![allow(dead_code)]

mod db;
mod sns;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Args as _, FromArgMatches as _};
use secrecy::SecretString;
use serde_json::{Value, json};
use statushub::config::{Secrets, ServeArgs, Settings};
use statushub::startup::Application;
use statushub::webhooks::whatsapp::signature;

// The harness's vocabulary, for tests to name even where none does yet.
#[allow(unused_imports)]
pub use db::{Bind, Cell, Outage, Recount, Row, TestDb};
#[allow(unused_imports)]
pub use sns::{SNS_TEST_CERT_NAME, SNS_TEST_HOST, SNS_TEST_TOPIC, SnsSigner};
#[allow(unused_imports)]
pub use stream::SseStream;

pub const WHATSAPP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const AUTH_SECRET: &str = "test-auth-secret-of-at-least-32-bytes";

/// Logs go to stdout when `TEST_LOG` is set, else nowhere.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        let subscriber = statushub::telemetry::get_subscriber(
            "debug",
            statushub::telemetry::LogStyle::PLAIN,
            std::io::stdout,
        );
        statushub::telemetry::init_subscriber(subscriber);
    } else {
        let subscriber = statushub::telemetry::get_subscriber(
            "info",
            statushub::telemetry::LogStyle::PLAIN,
            std::io::sink,
        );
        statushub::telemetry::init_subscriber(subscriber);
    }
});

/// A running statushub and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The SQLite file, `None` on PostgreSQL (kept for tests that open it
    /// themselves; new code goes through `db`).
    pub db_path: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    /// The hub's database, seen from the test. On PostgreSQL it owns the
    /// test's database, dropped when the `TestApp` goes.
    pub db: TestDb,
}

/// Returns `statushub serve`'s flags at their defaults, as clap parses an
/// empty command line, whatever the environment holds.
///
/// # Implementation Notes
///
/// Clap reads an argument's environment variable when `Arg::env` is called,
/// while the command is built, and parsing then prefers that value to the
/// default. Resetting every argument's `env` (`mut_args` with `env(None)`)
/// drops those values before parsing, so a developer's `DATABASE_URL` or
/// `STATUSHUB_MAX_QUEUE` cannot leak into a test. Clearing the variables
/// instead would need `std::env::remove_var`, which is unsound while other
/// test threads run (and `unsafe`, which this crate forbids).
pub fn default_serve_args() -> ServeArgs {
    let command = env_free_serve_command();
    let matches = command
        .try_get_matches_from(["serve"])
        .expect("the serve defaults parse");
    ServeArgs::from_arg_matches(&matches).expect("the serve defaults are complete")
}

/// The `serve` command with no argument bound to an environment variable.
pub fn env_free_serve_command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve")).mut_args(|arg| arg.env(None::<&str>))
}

/// The secrets every test hub uses.
pub fn test_secrets() -> Secrets {
    Secrets {
        whatsapp_webhook_secret: SecretString::from(WHATSAPP_SECRET),
        whatsapp_verify_token: SecretString::from(VERIFY_TOKEN),
        auth_secret: SecretString::from(AUTH_SECRET),
        admin_token: SecretString::from(ADMIN_TOKEN),
    }
}

/// Returns settings for a hub in `dir`: the `serve` defaults (see
/// [`default_serve_args`]) with the test secrets, listening on a random
/// port of 127.0.0.1, its database (a SQLite file) and data directory in
/// `dir`, two workers. [`spawn_app_with`] then puts the test's fresh
/// database of the chosen backend there ([`TestDb::fresh_in`]): settings
/// alone cannot keep a PostgreSQL database alive.
pub fn test_settings(dir: &Path) -> Settings {
    let mut settings =
        Settings::from_parts(default_serve_args(), test_secrets()).expect("the defaults are valid");
    settings.bind = "127.0.0.1:0".parse().unwrap();
    settings.database_url = TestDb::sqlite_in(dir).url();
    settings.data_dir = dir.join("data");
    settings.workers = Some(2);
    settings
}

/// Starts a hub with default test settings. Call from `#[actix_web::test]`.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a hub after `customize` has adjusted the settings.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let dir = tempfile::tempdir().unwrap();
    let fresh = TestDb::fresh_in(dir.path());
    let mut settings = test_settings(dir.path());
    settings.database_url = fresh.url();
    customize(&mut settings);
    // The fresh database, held by the TestApp (on PostgreSQL, dropped with
    // it), unless `customize` chose another.
    let db = if settings.database_url == fresh.url() {
        fresh
    } else {
        TestDb::from_url(&settings.database_url)
    };
    let db_path = db.sqlite_path().map(Path::to_path_buf);
    let app = Application::build(settings)
        .await
        .expect("failed to build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: test_client(),
        db_path,
        dir,
        db,
    }
}

/// The HTTP client of a [`TestApp`]. It never reuses a connection the hub
/// may be closing: a request sent on a kept-alive connection just as the
/// server's keep-alive (5 s) closes it fails (`IncompleteMessage`), and
/// tests leave their client idle for seconds (waiting for a pruning pass,
/// or while another hub works). Idle connections are dropped well before.
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// One WhatsApp status as `(message id, status, unix seconds)`.
pub type WaStatus<'a> = (&'a str, &'a str, i64);

/// Returns a Meta-shaped webhook body carrying `statuses`.
pub fn whatsapp_payload(statuses: &[WaStatus<'_>]) -> Value {
    let statuses: Vec<Value> = statuses
        .iter()
        .map(|(id, status, ts)| {
            let mut value = json!({
                "id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "15551234567",
                "conversation": {"id": "conv-1", "origin": {"type": "marketing"}},
                "pricing": {"billable": true, "pricing_model": "CBP", "category": "marketing"}
            });
            if *status == "failed" {
                value["errors"] = json!([{"code": 131026, "title": "Message undeliverable"}]);
            }
            value
        })
        .collect();
    statushub::webhooks::whatsapp::envelope(statuses)
}

/// Returns one Meta-shaped status object; a `failed` one carries `error`
/// (code, title) as `errors[0]` when given.
pub fn whatsapp_status(id: &str, status: &str, ts: i64, error: Option<(i64, &str)>) -> Value {
    let mut value = json!({"id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "15551234567"});
    if let Some((code, title)) = error {
        value["errors"] = json!([{"code": code, "title": title}]);
    }
    value
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Posts raw bytes to the WhatsApp webhook with the given signature header.
    pub async fn post_whatsapp_raw(
        &self,
        body: Vec<u8>,
        signature_header: Option<String>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(header) = signature_header {
            request = request.header("x-hub-signature-256", header);
        }
        request.send().await.unwrap()
    }

    /// Posts bytes signed with the app secret, as Meta does.
    pub async fn post_whatsapp_bytes(&self, body: Vec<u8>) -> reqwest::Response {
        let header = signature::sign(WHATSAPP_SECRET.as_bytes(), &body);
        self.post_whatsapp_raw(body, Some(header)).await
    }

    /// Posts a signed WhatsApp payload.
    pub async fn post_whatsapp(&self, payload: &Value) -> reqwest::Response {
        self.post_whatsapp_bytes(serde_json::to_vec(payload).unwrap())
            .await
    }

    /// Posts a signed payload and returns the receipt, asserting 200.
    pub async fn send_statuses(&self, statuses: &[WaStatus<'_>]) -> Value {
        let response = self.post_whatsapp(&whatsapp_payload(statuses)).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Registers messages as the admin; returns the receipt.
    pub async fn register(&self, messages: &Value) -> Value {
        let response = self.register_with(ADMIN_TOKEN, messages).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    pub async fn register_with(&self, token: &str, messages: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/messages"))
            .bearer_auth(token)
            .json(messages)
            .send()
            .await
            .unwrap()
    }

    /// Registers `ids` as WhatsApp messages of `tenant`/`campaign`.
    pub async fn register_whatsapp(&self, tenant: &str, campaign: &str, ids: &[&str]) -> Value {
        let messages: Vec<Value> = ids
            .iter()
            .map(|id| json!({"tenant_id": tenant, "campaign_id": campaign, "channel": "whatsapp", "provider_message_id": id}))
            .collect();
        self.register(&Value::Array(messages)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Returns a campaign's counters, as the admin: the metrics without
    /// what only `GET …/metrics` adds (failure reasons and cost), so they
    /// compare with the stream's `metrics` and `snapshot` data.
    pub async fn metrics(&self, campaign: &str) -> Value {
        let response = self
            .get(
                &format!("/api/v1/campaigns/{campaign}/metrics"),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        let mut metrics: Value = response.json().await.unwrap();
        let object = metrics.as_object_mut().unwrap();
        for key in ["failure_reasons", "failure_reasons_other", "cost"] {
            assert!(object.remove(key).is_some(), "metrics without {key}");
        }
        metrics
    }

    /// Returns a message with its timeline, as the admin.
    pub async fn message(&self, channel: &str, id: &str) -> Value {
        let response = self
            .get(&format!("/api/v1/messages/{channel}/{id}"), ADMIN_TOKEN)
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Returns a tenant token signed with the test auth secret.
    pub fn tenant_token(&self, tenant: &str, campaigns: Option<Vec<String>>) -> String {
        authenticator()
            .mint(tenant, campaigns, Duration::from_secs(3600))
            .unwrap()
    }

    /// Recounts a campaign from the database, checks every message row and
    /// the stored counters (see [`Recount::checked`]) and returns the counts;
    /// compare them with [`counts_only`] of the live metrics.
    pub async fn sql_counts(&self, campaign: &str) -> Value {
        self.db.recount(campaign).await.checked(campaign)
    }

    /// Asserts that the live counters (`GET …/metrics`), an independent SQL
    /// recount of the messages, their stored status column and the stored
    /// counters row (version included) all agree; returns the metrics.
    pub async fn assert_counts_agree(&self, campaign: &str) -> Value {
        let metrics = self.metrics(campaign).await;
        let recount = self.db.recount(campaign).await;
        let stored = recount.stored_counters.clone();
        let counts = recount.checked(campaign);
        assert_eq!(
            counts_only(&metrics),
            counts,
            "{campaign}: live counters against a recount of the messages"
        );
        let stored = stored.unwrap_or_else(|| panic!("{campaign}: no counters row"));
        assert_eq!(
            metrics["version"], stored["version"],
            "{campaign}: live and stored versions"
        );
        metrics
    }

    /// Counts rows of a table.
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.db.count_rows(table).await
    }

    /// Returns the answer of `GET /readyz`.
    pub async fn readyz(&self) -> reqwest::Response {
        self.client.get(self.url("/readyz")).send().await.unwrap()
    }

    /// Scrapes `/metrics` and returns the value of one sample, written as
    /// the exposition format writes it (`name` or `name{label="value"}`).
    pub async fn scrape(&self, sample: &str) -> f64 {
        let response = self.get("/metrics", ADMIN_TOKEN).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{sample} not in /metrics:\n{text}"))
    }
}

pub fn authenticator() -> statushub::auth::Authenticator {
    statushub::auth::Authenticator::new(
        &SecretString::from(AUTH_SECRET),
        &SecretString::from(ADMIN_TOKEN),
    )
}

/// Opens a SQLite file read-only (for tests that query it themselves).
pub async fn open_db(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// Returns the campaign's counters as an independent SQL recount of the
/// SQLite file at `db_path` gives them, shaped like the metrics JSON
/// (without version and names), after checking every message row and the
/// stored counters row (see [`TestDb::recount`] and [`Recount::checked`]).
pub async fn sql_counts(db_path: &Path, campaign: &str) -> Value {
    TestDb::sqlite(db_path)
        .recount(campaign)
        .await
        .checked(campaign)
}

/// Drops the fields of a metrics JSON that a recount does not have.
pub fn counts_only(metrics: &Value) -> Value {
    let mut counts = metrics.clone();
    let object = counts.as_object_mut().unwrap();
    for key in [
        "tenant_id",
        "campaign_id",
        "version",
        "updated_at",
        "failure_reasons",
        "failure_reasons_other",
        "cost",
    ] {
        object.remove(key);
    }
    counts
}

/// Returns the shared provider vectors directory `sub`. A missing
/// directory fails the test: no test passes without its input.
pub fn vectors_dir(sub: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/vectors")
        .join(sub);
    assert!(
        dir.is_dir(),
        "the shared provider vectors are missing: no folder {}",
        dir.display()
    );
    dir
}
