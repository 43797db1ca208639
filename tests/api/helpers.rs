//! `TestApp`: a statushub on 127.0.0.1:0 with a fresh SQLite file, and
//! request helpers that sign like the providers do.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Row as _;
use statushub::config::{Retention, Secrets, Settings, SqliteSynchronous, StreamLimits};
use statushub::startup::Application;
use statushub::webhooks::whatsapp::signature;

pub const WHATSAPP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const AUTH_SECRET: &str = "test-auth-secret-of-at-least-32-bytes";

/// Logs go to stdout when `TEST_LOG` is set, else nowhere.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        let subscriber = statushub::telemetry::get_subscriber("debug", std::io::stdout);
        statushub::telemetry::init_subscriber(subscriber);
    } else {
        let subscriber = statushub::telemetry::get_subscriber("info", std::io::sink);
        statushub::telemetry::init_subscriber(subscriber);
    }
});

/// A running statushub and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db_path: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Returns settings for a hub in `dir`, listening on a random port.
pub fn test_settings(dir: &Path) -> Settings {
    Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.join("statushub.db").display()),
        sqlite_synchronous: SqliteSynchronous::Full,
        data_dir: dir.join("data"),
        secrets: Secrets {
            whatsapp_webhook_secret: SecretString::from(WHATSAPP_SECRET),
            whatsapp_verify_token: SecretString::from(VERIFY_TOKEN),
            auth_secret: SecretString::from(AUTH_SECRET),
            admin_token: SecretString::from(ADMIN_TOKEN),
        },
        ses_webhook_secret: None,
        sns_topic_arns: Vec::new(),
        sns_cert_dir: None,
        sns_subscribe_override: None,
        sns_cert_download_override: None,
        enable_webhook_verification: true,
        body_limit: 1024 * 1024,
        api_body_limit: 64 * 1024 * 1024,
        max_batch: 2_000,
        max_queue: 50_000,
        campaign_idle: Duration::from_secs(300),
        workers: Some(2),
        sse_coalesce: Duration::from_millis(100),
        sse_heartbeat: Duration::from_secs(15),
        sse_replay_limit: 1000,
        request_timeout: Duration::from_secs(30),
        max_connections: 16_384,
        stream_limits: StreamLimits {
            total: 15_000,
            per_tenant: 1_000,
            per_token: 20,
        },
        retention: Retention {
            events: Some(Duration::from_secs(90 * 86_400)),
            dead_letters: Some(Duration::from_secs(30 * 86_400)),
            unmatched: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(600),
        },
    }
}

/// Starts a hub with default test settings. Call from `#[actix_web::test]`.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a hub after `customize` has adjusted the settings.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    customize(&mut settings);
    let db_path = dir.path().join("statushub.db");
    let app = Application::build(settings)
        .await
        .expect("failed to build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        db_path,
        dir,
    }
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

    /// Returns a campaign's counters, as the admin.
    pub async fn metrics(&self, campaign: &str) -> Value {
        let response = self
            .get(
                &format!("/api/v1/campaigns/{campaign}/metrics"),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
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

    /// Counts straight from the SQLite file; see [`sql_counts`].
    pub async fn sql_counts(&self, campaign: &str) -> Value {
        sql_counts(&self.db_path, campaign).await
    }

    /// Counts rows of a table.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let pool = open_db(&self.db_path).await;
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        count
    }
}

pub fn authenticator() -> statushub::auth::Authenticator {
    statushub::auth::Authenticator::new(
        &SecretString::from(AUTH_SECRET),
        &SecretString::from(ADMIN_TOKEN),
    )
}

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

/// Returns the campaign's counters as SQL `COUNT`s over `messages` give
/// them, shaped like the metrics JSON (without version and timestamps), so
/// tests can compare them with the live counters.
pub async fn sql_counts(db_path: &Path, campaign: &str) -> Value {
    let pool = open_db(db_path).await;
    // Bits of the seen mask: sent 1, delivered 2, read 4, clicked 8, complained 16, failed 32.
    let row = sqlx::query(
        "SELECT COUNT(*) AS total,
                COALESCE(SUM(seen & 1 != 0), 0) AS sent,
                COALESCE(SUM(seen & 2 != 0), 0) AS delivered,
                COALESCE(SUM(seen & 4 != 0), 0) AS read,
                COALESCE(SUM(seen & 8 != 0), 0) AS clicked,
                COALESCE(SUM(seen & 16 != 0), 0) AS complained,
                COALESCE(SUM(status = 'pending'), 0) AS now_pending,
                COALESCE(SUM(status = 'sent'), 0) AS now_sent,
                COALESCE(SUM(status = 'delivered'), 0) AS now_delivered,
                COALESCE(SUM(status = 'read'), 0) AS now_read,
                COALESCE(SUM(status = 'failed'), 0) AS now_failed
         FROM messages m JOIN campaigns c ON c.id = m.campaign_pk WHERE c.campaign_id = ?",
    )
    .bind(campaign)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let get = |name: &str| row.try_get::<i64, _>(name).unwrap();
    json!({
        "total": get("total"), "sent": get("sent"), "delivered": get("delivered"), "read": get("read"),
        "failed": get("now_failed"), "clicked": get("clicked"), "complained": get("complained"),
        "by_status": {"pending": get("now_pending"), "sent": get("now_sent"), "delivered": get("now_delivered"),
                      "read": get("now_read"), "failed": get("now_failed")}
    })
}

/// Drops the fields of a metrics JSON that a recount does not have.
pub fn counts_only(metrics: &Value) -> Value {
    let mut counts = metrics.clone();
    let object = counts.as_object_mut().unwrap();
    for key in ["tenant_id", "campaign_id", "version", "updated_at"] {
        object.remove(key);
    }
    counts
}

/// Returns the shared provider vectors folder `sub` (`../shared/vectors/sub`
/// beside the checkout).
///
/// # Panics
///
/// When it is absent: a test that reads vectors fails without them rather
/// than passing without checking anything.
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
