//! Logs as an operator's collector reads them: the real binary, its stderr
//! a file (so not a terminal), `STATUSHUB_LOG_FORMAT=json` giving one JSON
//! object a line, no colour codes, and a request id that comes in (or is
//! generated), goes back in `X-Request-Id` and names every line of its
//! request.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// Longest any one wait of this test may take: a hang guard.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A running statushub, killed and reaped when dropped.
struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with the test secrets, a store in `dir`, stderr into
/// `dir/stderr.log`, then `env` applied.
fn hub_command(dir: &Path, port: u16, env: &[(&str, &str)]) -> Command {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_statushub"));
    command
        .arg("serve")
        .env("STATUSHUB_BIND", format!("127.0.0.1:{port}"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("hub.db").display()),
        )
        .env("STATUSHUB_DATA_DIR", dir.join("data"))
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
        .env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
        .env("STATUSHUB_BODY_LIMIT", "4096")
        // The request lines are at debug; sqlx's statement lines are not
        // wanted.
        .env("RUST_LOG", "info,statushub=debug")
        .env_remove("NO_COLOR")
        .env_remove("STATUSHUB_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the hub and waits until `/readyz` answers.
async fn start_hub(dir: &Path, env: &[(&str, &str)]) -> (Hub, String) {
    let port = free_port();
    let hub = Hub(hub_command(dir, port, env).spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + HANG_GUARD;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                return (hub, base);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("statushub did not become ready at {base}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The `X-Request-Id` of a response; every response must have one.
fn echoed_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on a {} response", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses every line of the log as a JSON object with a timestamp, a level
/// and a message.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
            for field in ["timestamp", "level", "message"] {
                assert!(value.get(field).is_some(), "no {field} in {line}");
            }
            value
        })
        .collect()
}

/// The lines logged while serving the request `id`.
fn lines_of<'a>(lines: &'a [Value], id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["span"]["request_id"] == id)
        .collect()
}

/// The "request finished" (or "request failed") line of request `id`.
fn finished_line<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let mine = lines_of(lines, id);
    let finished: Vec<_> = mine
        .iter()
        .filter(|line| line["message"] == "request finished" || line["message"] == "request failed")
        .collect();
    assert_eq!(finished.len(), 1, "request {id}: {mine:#?}");
    finished[0]
}

#[actix_web::test]
async fn json_logs_name_each_request_by_its_id_without_colour_codes() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let (hub, base) = start_hub(dir.path(), &[("STATUSHUB_LOG_FORMAT", "json")]).await;
    let client = client();

    // Act: a request with its own id, one without, one with an id that
    // must not be taken, a refused webhook, a 404, the guard's 415, a 413
    // and a stream.
    let given = client
        .get(format!("{base}/healthz"))
        .header("X-Request-Id", "lb-7f3a:0001.x_y-z")
        .send()
        .await
        .unwrap();
    let generated = client.get(format!("{base}/healthz")).send().await.unwrap();
    let bad_id = "evil id\"}{<script>";
    let refused_id = client
        .get(format!("{base}/healthz"))
        .header("X-Request-Id", bad_id)
        .send()
        .await
        .unwrap();
    let too_long = client
        .get(format!("{base}/healthz"))
        .header("X-Request-Id", "a".repeat(129))
        .send()
        .await
        .unwrap();
    let body = serde_json::to_vec(&whatsapp_payload(&[("wamid.log1", "sent", 1)])).unwrap();
    let unsigned = client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("X-Request-Id", "webhook-1")
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let missing = client
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    let compressed = client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("Content-Encoding", "gzip")
        .body("x")
        .send()
        .await
        .unwrap();
    let oversized = client
        .post(format!("{base}/webhooks/whatsapp"))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 8192])
        .send()
        .await
        .unwrap();
    let stream = client
        .get(format!("{base}/api/v1/stream"))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Request-Id", "stream-1")
        .send()
        .await
        .unwrap();

    // Assert: the echoes.
    assert_eq!(given.status(), 200);
    assert_eq!(echoed_id(&given), "lb-7f3a:0001.x_y-z");
    let generated_id = echoed_id(&generated);
    assert!(is_generated_id(&generated_id), "{generated_id}");
    let replaced_id = echoed_id(&refused_id);
    assert!(is_generated_id(&replaced_id), "{replaced_id}");
    let replaced_long = echoed_id(&too_long);
    assert!(is_generated_id(&replaced_long), "{replaced_long}");
    assert_ne!(generated_id, replaced_id);
    assert_eq!(unsigned.status(), 401);
    assert_eq!(echoed_id(&unsigned), "webhook-1");
    assert_eq!(missing.status(), 404);
    let missing_id = echoed_id(&missing);
    assert_eq!(compressed.status(), 415);
    let compressed_id = echoed_id(&compressed);
    assert_eq!(oversized.status(), 413);
    let oversized_id = echoed_id(&oversized);
    assert_eq!(stream.status(), 200);
    assert_eq!(echoed_id(&stream), "stream-1");
    drop(stream);
    // Every line of a finished request is written before its response.
    drop(hub);

    // Assert: the log.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!log.contains("\x1b["), "colour codes in a log file:\n{log}");
    assert!(!log.contains("evil id"), "an unsafe request id was logged");
    let lines = json_lines(&log);
    for (id, status, route) in [
        ("lb-7f3a:0001.x_y-z", 200, "/healthz"),
        (generated_id.as_str(), 200, "/healthz"),
        (replaced_id.as_str(), 200, "/healthz"),
        ("webhook-1", 401, "/webhooks/whatsapp"),
        (missing_id.as_str(), 404, "unmatched"),
        (compressed_id.as_str(), 415, "/webhooks/whatsapp"),
        (oversized_id.as_str(), 413, "/webhooks/whatsapp"),
    ] {
        let line = finished_line(&lines, id);
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["span"]["route"], route, "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(line["span"]["method"].is_string(), "{line}");
    }
    // The refused signature is a warning of that request.
    let refused = lines_of(&lines, "webhook-1");
    assert!(
        refused.iter().any(|line| line["level"] == "WARN"
            && line["message"]
                .as_str()
                .is_some_and(|message| message.contains("refused whatsapp webhook"))),
        "{refused:#?}"
    );
}

#[actix_web::test]
async fn text_logs_to_a_file_have_no_colour_codes_and_carry_the_request_id() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let (hub, base) = start_hub(dir.path(), &[]).await;

    // Act: a refused webhook logs a warning inside its request.
    let response = client()
        .post(format!("{base}/webhooks/whatsapp"))
        .header("X-Request-Id", "text-req-1")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(echoed_id(&response), "text-req-1");
    drop(hub);

    // Assert
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!log.contains("\x1b["), "colour codes in a log file:\n{log}");
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("request_id=text-req-1")
            && line.contains("refused whatsapp webhook")),
        "{log}"
    );
    assert!(
        log.lines()
            .all(|line| serde_json::from_str::<Value>(line).is_err()),
        "text is the default"
    );
}

#[test]
fn an_unknown_log_format_stops_the_binary_with_the_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = hub_command(dir.path(), free_port(), &[("STATUSHUB_LOG_FORMAT", "xml")])
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("the hub started with STATUSHUB_LOG_FORMAT=xml");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("'xml'"), "{log}");
    assert!(log.contains("text") && log.contains("json"), "{log}");
}
