//! The debug page in a real browser: Debian's headless Chromium driven through
//! chromedriver with fantoccini. The test types the admin token into the
//! page, sends signed webhooks, and watches the page's counters, event tail
//! and dead letters update; it saves a screenshot to `target/debug-page.png`
//! and fails on any browser console error.
//!
//! Needs `/usr/bin/chromium` and `chromedriver` (Debian: `apt-get install
//! chromium chromium-driver`; `scripts/test` installs them). Without them the test
//! fails, with that advice: it never passes without a browser.

use std::future::Future;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::ses::harness::{StandIn, confirmation};

const CHROMIUM: &str = "/usr/bin/chromium";
const DEADLINE: Duration = Duration::from_secs(20);

/// A chromedriver child process, killed on drop.
struct Chromedriver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
    profile_dir: PathBuf,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the first `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns a port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver on a free port and waits until it answers `/status`.
async fn start_chromedriver(driver: &Path) -> Chromedriver {
    let profile = tempfile::tempdir().unwrap();
    let profile_dir = profile.path().join("profile");
    let port = free_port();
    let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {}: {error}", driver.display()));
    let chromedriver = Chromedriver {
        child,
        port,
        _profile: profile,
        profile_dir,
    };
    let client = reqwest::Client::new();
    let status = format!("http://127.0.0.1:{port}/status");
    wait_for("chromedriver to answer /status", || async {
        let response = client.get(&status).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["value"]["ready"] == true).then_some(())
    })
    .await;
    chromedriver
}

/// Polls `probe` every 100 ms until it returns `Some`, failing after [`DEADLINE`].
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` in the page and returns its result.
async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, Vec::new()).await.unwrap()
}

/// Polls the page until `script` returns `expected`.
async fn wait_for_js(client: &Client, what: &str, script: &str, expected: Value) {
    let start = Instant::now();
    loop {
        let value = js(client, script).await;
        if value == expected {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: wanted {expected}, page shows {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the text of `[data-campaign=campaign] [data-field=field]`, or null.
fn field_script(campaign: &str, field: &str) -> String {
    format!(
        r#"const n = document.querySelector('[data-campaign="{campaign}"] [data-field="{field}"]');
           return n ? n.textContent : null;"#
    )
}

/// Returns and clears the browser's console log.
///
/// Why this way: chromedriver records the console when the session asks for
/// `goog:loggingPrefs: {"browser": "ALL"}`, including what no script could
/// catch (CSP violations, failed loads, errors during parsing), and hands it
/// out through its `POST /session/{id}/se/log` extension. fantoccini can send
/// it with `issue_cmd`, but its command trait is typed with the `http` and
/// `url` crates; posting the same request with reqwest (already a dependency)
/// to the same chromedriver is equivalent and needs no extra crates.
async fn browser_log(driver: &Chromedriver, client: &Client) -> Vec<Value> {
    let session = client.session_id().await.unwrap().expect("a session id");
    let url = format!("http://127.0.0.1:{}/session/{session}/se/log", driver.port);
    let response = reqwest::Client::new()
        .post(url)
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "reading the browser log");
    let body: Value = response.json().await.unwrap();
    body["value"].as_array().cloned().unwrap_or_default()
}

/// Console entries at level SEVERE (what DevTools shows as errors).
fn errors(log: &[Value]) -> Vec<&Value> {
    log.iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect()
}

#[actix_web::test]
async fn debug_page_shows_live_counters_and_events_in_a_real_browser() {
    let Some(chromedriver) = on_path("chromedriver").filter(|_| Path::new(CHROMIUM).is_file())
    else {
        panic!(
            "the debug-page browser test needs {CHROMIUM} and chromedriver: install them with \
             `apt-get install -y chromium chromium-driver` (`scripts/test` does so when they are missing)"
        );
    };

    // SNS confirmations go to a local stand-in; with no topic list they are
    // held for the admin, who confirms one with the page's button.
    let signer = SnsSigner::new();
    let stand_in = StandIn::start().await;
    let (cert_dir, base) = (signer.cert_dir(), stand_in.base.clone());
    let app = spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(cert_dir);
        settings.sns_subscribe_override = Some(base);
    })
    .await;
    let ids = [
        "wamid.DBG1",
        "wamid.DBG2",
        "wamid.DBG3",
        "wamid.DBG4",
        "wamid.DBG5",
    ];
    app.register_whatsapp("t1", "c1", &ids).await;
    // Before the page opens: the tail must show it from the store.
    app.send_statuses(&[("wamid.DBG5", "sent", 1_700_000_005)])
        .await;

    let driver = start_chromedriver(&chromedriver).await;
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1360,1300", "--hide-scrollbars",
                format!("--user-data-dir={}", driver.profile_dir.display()),
            ],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("failed to start a chromium session through chromedriver");

    // Always end the browser session, then report the scenario's outcome.
    let outcome = AssertUnwindSafe(scenario(&app, &driver, &client, &signer, &stand_in))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(
    app: &TestApp,
    driver: &Chromedriver,
    client: &Client,
    signer: &SnsSigner,
    stand_in: &StandIn,
) {
    client.goto(&app.url("/")).await.unwrap();
    let input = client
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Id("token-input"))
        .await
        .unwrap();

    // A wrong token is refused with a clear message, and the form stays.
    input.send_keys("not-the-admin-token").await.unwrap();
    client
        .find(Locator::Id("token-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_js(
        client,
        "the refused-token message",
        "return document.getElementById('token-error').textContent.includes('(401)');",
        json!(true),
    )
    .await;
    // The refused request shows up as a failed load (401) in the console;
    // that one is expected. Anything else is not.
    let log = browser_log(driver, client).await;
    let unexpected: Vec<_> = errors(&log)
        .into_iter()
        .filter(|entry| !entry["message"].as_str().unwrap_or("").contains("401"))
        .collect();
    assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");

    // The admin token opens the dashboard and both streams go live.
    let input = client.find(Locator::Id("token-input")).await.unwrap();
    input.send_keys(ADMIN_TOKEN).await.unwrap();
    client
        .find(Locator::Id("token-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for stream in ["campaigns", "webhooks"] {
        wait_for_js(
            client,
            &format!("the {stream} stream to be live"),
            &format!(
                r#"return document.querySelector('#connection-state [data-stream="{stream}"]').dataset.state;"#
            ),
            json!("live"),
        )
        .await;
    }
    assert_eq!(
        js(
            client,
            "return sessionStorage.getItem('statushub.admin_token');"
        )
        .await,
        json!(ADMIN_TOKEN),
        "the token is kept in sessionStorage"
    );
    wait_for_js(
        client,
        "the snapshot of c1",
        &field_script("c1", "total"),
        json!("5"),
    )
    .await;
    // The tail is backfilled from `/webhooks/events`: the status sent before
    // the page opened is there, without waiting for the next webhook.
    wait_for_js(
        client,
        "the backfilled tail",
        r#"const row = document.querySelector('#event-tail tr[data-message="wamid.DBG5"]');
           return row ? [row.dataset.backfilled, row.dataset.outcome] : null;"#,
        json!(["true", "applied"]),
    )
    .await;

    // Webhooks: out of order (read before delivered), a duplicate, an
    // unknown message id, and a signed payload nobody can read.
    app.send_statuses(&[
        ("wamid.DBG1", "read", 1_700_000_030),
        ("wamid.DBG1", "delivered", 1_700_000_020),
        ("wamid.DBG2", "sent", 1_700_000_010),
        ("wamid.DBG2", "delivered", 1_700_000_020),
        ("wamid.DBG3", "sent", 1_700_000_010),
        ("wamid.DBG4", "failed", 1_700_000_015),
    ])
    .await;
    app.send_statuses(&[("wamid.DBG2", "delivered", 1_700_000_020)])
        .await;
    app.send_statuses(&[("wamid.UNKNOWN", "delivered", 1_700_000_020)])
        .await;
    let response = app
        .post_whatsapp_bytes(br#"{"object":"whatsapp_business_account","entry":"nope"}"#.to_vec())
        .await;
    assert_eq!(response.status(), 200);

    let metrics = app.metrics("c1").await;
    for (field, expected) in [
        ("sent", 4),
        ("delivered", 2),
        ("read", 1),
        ("failed", 1),
        ("clicked", 0),
        ("complained", 0),
    ] {
        assert_eq!(metrics[field], expected, "{field} in {metrics}");
        wait_for_js(
            client,
            &format!("c1's {field} counter"),
            &field_script("c1", field),
            json!(expected.to_string()),
        )
        .await;
    }

    // The tail shows every status, newest on top, with its outcome.
    wait_for_js(
        client,
        "the event tail",
        r#"const rows = [...document.querySelectorAll('#event-tail tr')];
           const outcomes = new Set(rows.map((row) => row.dataset.outcome));
           return rows.length >= 9 && ['applied', 'duplicate', 'unmatched', 'dead_letter']
             .every((outcome) => outcomes.has(outcome));"#,
        json!(true),
    )
    .await;
    assert_eq!(
        js(
            client,
            "return document.querySelector('#event-tail tr').dataset.outcome;"
        )
        .await,
        json!("dead_letter"),
        "newest on top"
    );

    // Dead letters and the buffered count come from the admin endpoints.
    wait_for_js(
        client,
        "the dead letter list",
        "return document.querySelectorAll('#dead-letters [data-dead-letter]').length;",
        json!(1),
    )
    .await;
    // A letter the parser reads now (stored as an older statushub would
    // have) gets a Replay button; one click applies it, live.
    let body =
        serde_json::to_vec(&whatsapp_payload(&[("wamid.DBG3", "read", 1_700_000_035)])).unwrap();
    let letter =
        crate::dead_letter_replay::store_letter(app, &body, "older shape", Some("hmac-sha256"), 0)
            .await;
    let selector = format!("#dead-letters [data-dead-letter='{letter}']");
    wait_for_js(
        client,
        "the stored letter, open, with its replay button",
        &format!(
            "const item = document.querySelector(\"{selector}\"); \
             return !!item && item.dataset.state === 'open' && !!item.querySelector('button[data-replay]');"
        ),
        json!(true),
    )
    .await;
    client
        .find(Locator::Css(&format!("{selector} button[data-replay]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_js(
        client,
        "the letter replayed and applied, without its button",
        &format!(
            "const item = document.querySelector(\"{selector}\"); \
             return !!item && item.dataset.state === 'replayed' \
               && item.querySelector('[data-outcome]').dataset.outcome === 'applied' \
               && !item.querySelector('button[data-replay]');"
        ),
        json!(true),
    )
    .await;
    wait_for_js(
        client,
        "c1's read counter after the replay",
        &field_script("c1", "read"),
        json!("2"),
    )
    .await;
    assert_eq!(app.metrics("c1").await["read"], 2);

    wait_for_js(
        client,
        "the unmatched count",
        "return document.getElementById('unmatched-count').textContent;",
        json!("1"),
    )
    .await;
    wait_for_js(
        client,
        "the health tiles",
        r#"return document.querySelector('[data-health="database"]').textContent.startsWith('ok')
             && document.querySelector('[data-health="verification"]').textContent === 'on'
             && document.querySelector('[data-health="queue_depth"]').textContent === '0';"#,
        json!(true),
    )
    .await;

    // A campaign registered while the page is open appears live.
    app.register_whatsapp("t2", "c2", &["wamid.DBG6", "wamid.DBG7"])
        .await;
    app.send_statuses(&[("wamid.DBG6", "read", 1_700_000_040)])
        .await;
    wait_for_js(
        client,
        "c2's read counter",
        &field_script("c2", "read"),
        json!("1"),
    )
    .await;

    // The campaign search narrows the list; clearing it shows every one.
    let search = client.find(Locator::Id("campaign-search")).await.unwrap();
    search.send_keys("c2").await.unwrap();
    wait_for_js(
        client,
        "the search to leave c2 only",
        r#"return [...document.querySelectorAll('#campaigns .campaign')]
             .filter((card) => !card.hidden).map((card) => card.dataset.campaign);"#,
        json!(["c2"]),
    )
    .await;
    search.clear().await.unwrap();
    js(
        client,
        "document.getElementById('campaign-search').dispatchEvent(new Event('input')); return null;",
    )
    .await;
    wait_for_js(
        client,
        "every campaign shown again",
        "return [...document.querySelectorAll('#campaigns .campaign')].filter((c) => !c.hidden).length;",
        json!(2),
    )
    .await;

    // Selecting c1 shows its funnel over time, failure reasons, cost and
    // messages; each must agree with what the API answers.
    client
        .find(Locator::Css(r#"#campaigns .campaign[data-campaign="c1"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let metrics: Value = app
        .client
        .get(app.url("/api/v1/campaigns/c1/metrics?tenant_id=t1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let series: Value = app
        .client
        .get(app.url("/api/v1/campaigns/c1/timeseries?bucket=1m&tenant_id=t1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let buckets = series["buckets"].as_array().expect("buckets").clone();
    assert!(!buckets.is_empty(), "{series}");
    for stage in ["sent", "delivered", "read", "failed"] {
        let total: i64 = buckets.iter().map(|b| b[stage].as_i64().unwrap_or(0)).sum();
        wait_for_js(
            client,
            &format!("the chart's {stage} line"),
            &format!(
                r#"const line = document.querySelector('#chart svg [data-stage="{stage}"]');
                   return line ? Number(line.dataset.total) : null;"#
            ),
            json!(total),
        )
        .await;
    }
    assert_eq!(
        js(
            client,
            "return document.querySelector('#chart svg').dataset.buckets;"
        )
        .await,
        json!(buckets.len().to_string())
    );
    let reasons = metrics["failure_reasons"]
        .as_array()
        .expect("failure reasons");
    assert!(!reasons.is_empty(), "c1 has a failed message: {metrics}");
    wait_for_js(
        client,
        "the failure-reason table",
        r#"return [...document.querySelectorAll('#failure-table tbody tr[data-reason]')]
             .map((row) => [row.dataset.reason, row.cells[3].textContent]);"#,
        json!(
            reasons
                .iter()
                .map(|r| json!([r["code"].as_str().unwrap(), r["messages"].to_string()]))
                .collect::<Vec<_>>()
        ),
    )
    .await;
    wait_for_js(
        client,
        "the cost table",
        r#"const cell = document.querySelector('#cost-table [data-cost="billable"]');
           return cell ? cell.textContent : null;"#,
        json!(metrics["cost"]["billable"].to_string()),
    )
    .await;
    wait_for_js(
        client,
        "c1's messages",
        "return document.querySelectorAll('#messages-table tbody tr').length;",
        json!(5),
    )
    .await;

    // The resend audience: delivered but not read.
    js(
        client,
        r#"document.querySelector('#message-filters [data-checks="seen"] input[value="delivered"]').click();
           document.querySelector('#message-filters [data-checks="not_seen"] input[value="read"]').click();
           return null;"#,
    )
    .await;
    client
        .find(Locator::Id("messages-search"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_js(
        client,
        "the filtered messages",
        "return [...document.querySelectorAll('#messages-table tbody tr')].map((row) => row.dataset.message);",
        json!(["wamid.DBG2"]),
    )
    .await;
    // The CSV download holds the same selection.
    let href = js(
        client,
        "return document.getElementById('messages-csv').getAttribute('href');",
    )
    .await;
    let href = href.as_str().expect("a CSV link");
    assert!(
        href.contains("format=csv") && href.contains("not_seen=read"),
        "{href}"
    );
    let response = app.client.get(app.url(href)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one message: {csv}");
    assert!(lines[0].starts_with("provider_message_id,"), "{csv}");
    assert!(lines[1].starts_with("wamid.DBG2,"), "{csv}");

    // The detail follows c1's own stream (`include=timeseries`): a new
    // status moves the chart without the page asking for the time series.
    let read_before = js(
        client,
        r#"return Number(document.querySelector('#chart svg [data-stage="read"]').dataset.total);"#,
    )
    .await
    .as_i64()
    .expect("the read line's total");
    app.send_statuses(&[("wamid.DBG5", "read", 1_700_000_090)])
        .await;
    wait_for_js(
        client,
        "the chart's read line after a live status",
        r#"const line = document.querySelector('#chart svg [data-stage="read"]');
           return line ? Number(line.dataset.total) : null;"#,
        json!(read_before + 1),
    )
    .await;
    assert_eq!(
        js(
            client,
            r#"return performance.getEntriesByType('resource')
                 .filter((entry) => entry.name.includes('/timeseries?')).length;"#,
        )
        .await,
        json!(0),
        "the page polled the time series"
    );
    let screenshot = client.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug-page-campaign.png");
    std::fs::write(&path, screenshot).unwrap();

    wait_for_js(
        client,
        "the health tiles to count c2's messages",
        r#"return document.querySelector('[data-health="messages"]').textContent;"#,
        json!("7"),
    )
    .await;

    // A signed subscription confirmation for a topic nobody listed is held:
    // the page shows it with a button, and the button confirms it.
    let topic = "arn:aws:sns:eu-west-1:123456789012:someone-elses-topic";
    let held = signer.sign(
        confirmation("SubscriptionConfirmation", topic, "tok-page"),
        "2",
    );
    assert_eq!(app.post_sns(&held).await.status(), 200);
    assert!(stand_in.requests().is_empty(), "held, not confirmed");
    wait_for_js(
        client,
        "the held confirmation",
        "const item = document.querySelector('#sns-pending li'); \
         return !document.getElementById('sns-pending-panel').hidden && !!item \
            && item.textContent.includes('someone-elses-topic');",
        json!(true),
    )
    .await;
    let screenshot = client.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug-page-held.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, screenshot).unwrap();
    client
        .find(Locator::Css("#sns-pending button[data-confirm]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_js(
        client,
        "the confirmation to be done and the panel to empty",
        "return document.getElementById('sns-pending-panel').hidden;",
        json!(true),
    )
    .await;
    assert_eq!(
        stand_in.requests(),
        [format!(
            "GET /?Action=ConfirmSubscription&TopicArn={topic}&Token=tok-page HTTP/1.1"
        )],
        "one click, one confirmation"
    );

    let screenshot = client.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug-page.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, screenshot).unwrap();
    println!("screenshot saved to {}", path.display());

    // "Forget token" drops it and asks again.
    client
        .find(Locator::Id("forget-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        js(
            client,
            "return [document.getElementById('login').hidden, sessionStorage.getItem('statushub.admin_token')];"
        )
        .await,
        json!([false, null])
    );

    let log = browser_log(driver, client).await;
    let errors = errors(&log);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
