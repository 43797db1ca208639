//! What a hostile client may hold: compressed bodies are refused before a
//! byte is read, a request must arrive whole within its deadline, open
//! connections are capped, the descriptor limit is raised, weak secrets stop
//! the binary, and an empty token is nobody.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Longest any step below may take before the test fails: a hang guard, not
/// a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Opens a raw connection to the hub.
async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address).await.unwrap()
}

/// Reads until the server closes the connection (or `HANG_GUARD` passes)
/// and returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut received))
        .await
        .expect("the server kept the connection open")
        .unwrap_or_default();
    String::from_utf8_lossy(&received).into_owned()
}

#[actix_web::test]
async fn compressed_bodies_are_refused_before_a_byte_is_read() {
    let app = spawn_app().await;
    for (method, path) in [
        ("POST", "/webhooks/whatsapp"),
        ("POST", "/webhooks/email"),
        ("POST", "/api/v1/messages"),
        ("GET", "/healthz"),
    ] {
        for encoding in [
            "gzip",
            "br",
            "deflate",
            "zstd",
            "gzip, identity",
            "x-unknown",
        ] {
            // A head announcing 10 MB of gzip, and no body at all: an answer
            // can only come from a server that did not wait for the body.
            let mut stream = connect(&app).await;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: hub\r\ncontent-type: application/json\r\n\
                 authorization: Bearer {ADMIN_TOKEN}\r\ncontent-encoding: {encoding}\r\n\
                 content-length: 10000000\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let answer = read_to_close(&mut stream).await;
            assert!(
                answer.starts_with("HTTP/1.1 415"),
                "{method} {path} with {encoding}: {answer}"
            );
        }
    }

    // A correctly signed gzip body is refused too, and nothing is stored.
    app.register_whatsapp("t1", "c1", &["wamid.z"]).await;
    let json =
        serde_json::to_vec(&whatsapp_payload(&[("wamid.z", "read", 1_700_000_000)])).unwrap();
    let mut encoder = GzEncoder::default();
    encoder.write_all(&json).unwrap();
    let gzipped = encoder.finish();
    let signature =
        statushub::webhooks::whatsapp::signature::sign(WHATSAPP_SECRET.as_bytes(), &gzipped);
    let response = reqwest::Client::new()
        .post(app.url("/webhooks/whatsapp"))
        .header("content-encoding", "gzip")
        .header("x-hub-signature-256", signature)
        .body(gzipped)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(app.count_rows("status_events").await, 0);

    // `identity` is no encoding: accepted.
    let body =
        serde_json::to_vec(&whatsapp_payload(&[("wamid.z", "read", 1_700_000_000)])).unwrap();
    let response = reqwest::Client::new()
        .post(app.url("/webhooks/whatsapp"))
        .header("content-encoding", "identity")
        .header(
            "x-hub-signature-256",
            statushub::webhooks::whatsapp::signature::sign(WHATSAPP_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A minimal gzip writer (stored blocks), so the test needs no compression
/// crate: what matters is the header, not the ratio.
#[derive(Default)]
struct GzEncoder {
    data: Vec<u8>,
}

impl std::io::Write for GzEncoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl GzEncoder {
    fn finish(self) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        for (index, chunk) in self.data.chunks(65_535).enumerate() {
            let last = (index + 1) * 65_535 >= self.data.len();
            out.push(u8::from(last));
            let len = u16::try_from(chunk.len()).unwrap();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(&crc32(&self.data).to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.data.len()).unwrap().to_le_bytes());
        out
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[actix_web::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    let app = spawn_app_with(|settings| settings.request_timeout = Duration::from_secs(1)).await;

    // Silent after its first body byte.
    let mut silent = connect(&app).await;
    silent
        .write_all(b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: hub\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();

    // Trickling one byte every 200 ms: each byte arrives in time, the whole
    // body never does.
    let mut trickle = connect(&app).await;
    trickle
        .write_all(
            format!(
                "POST /api/v1/messages HTTP/1.1\r\nhost: hub\r\n\
                 authorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: 1000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let trickler = actix_web::rt::spawn(async move {
        for _ in 0..100 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickle
    });

    let answer = read_to_close(&mut silent).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let mut trickle = trickler.await.unwrap();
    let answer = read_to_close(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // The hub is fine, and a body that arrives in time is served.
    app.register_whatsapp("t1", "c1", &["wamid.1"]).await;
    app.send_statuses(&[("wamid.1", "sent", 1_700_000_000)])
        .await;
}

#[actix_web::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|settings| {
        settings.workers = Some(1);
        settings.max_connections = 2;
    })
    .await;
    let mut held = vec![connect(&app).await, connect(&app).await];
    // Make sure both were accepted: each answers a request.
    for stream in &mut held {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 256];
        let read = tokio::time::timeout(HANG_GUARD, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    }

    // A third client waits in the listen backlog while both are open.
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: hub\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "the third connection was served beyond the cap"
    );

    // Once one closes, it is served.
    held.pop();
    let answer = read_to_close(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Returns the binary's command with the test secrets and a store in `dir`,
/// then `env` applied (`None` removes a variable).
fn hub_command(dir: &std::path::Path, env: &[(&str, Option<&str>)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_statushub"));
    command
        .arg("serve")
        .env("STATUSHUB_BIND", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("hub.db").display()),
        )
        .env("STATUSHUB_DATA_DIR", dir.join("data"))
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
        .env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
}

/// Runs the binary, which must stop by itself, and returns its exit status
/// and log.
fn run_refused(
    dir: &std::path::Path,
    env: &[(&str, Option<&str>)],
) -> (std::process::ExitStatus, String) {
    let mut child = hub_command(dir, env).spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            return (status, log);
        }
        if started.elapsed() > HANG_GUARD {
            let _ = child.kill();
            panic!("the hub started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn empty_or_weak_secrets_stop_the_binary_naming_the_variable() {
    let short_auth = "a".repeat(31);
    let short_admin = "a".repeat(15);
    let cases: [(&str, &str); 9] = [
        ("STATUSHUB_AUTH_SECRET", ""),
        ("STATUSHUB_AUTH_SECRET", &short_auth),
        ("STATUSHUB_ADMIN_TOKEN", ""),
        ("STATUSHUB_ADMIN_TOKEN", &short_admin),
        ("STATUSHUB_ADMIN_TOKEN", "                "),
        ("WHATSAPP_WEBHOOK_SECRET", ""),
        ("WHATSAPP_WEBHOOK_VERIFY_TOKEN", ""),
        ("WHATSAPP_WEBHOOK_VERIFY_TOKEN", "   "),
        ("SES_WEBHOOK_SECRET", ""),
    ];
    for (name, value) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (status, log) = run_refused(dir.path(), &[(name, Some(value))]);
        assert!(!status.success(), "{name}={value:?} was accepted");
        assert!(
            log.contains(name),
            "{name}={value:?}: the log does not name it: {log}"
        );
        assert!(
            !dir.path().join("hub.db").exists(),
            "{name}: the store was opened"
        );
    }
}

#[test]
fn a_weak_or_readable_secrets_file_stops_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let file = data.join("secrets.json");
    std::fs::write(&file, r#"{"STATUSHUB_AUTH_SECRET": "short"}"#).unwrap();
    set_mode(&file, 0o600);
    let (status, log) = run_refused(dir.path(), &[("STATUSHUB_AUTH_SECRET", None)]);
    assert!(!status.success(), "a short key from the file was accepted");
    assert!(log.contains("STATUSHUB_AUTH_SECRET"), "{log}");

    // Group- or world-readable: refused as ssh refuses such a key, even
    // though every secret also comes from the environment.
    std::fs::write(&file, "{}").unwrap();
    for mode in [0o640, 0o604, 0o660] {
        set_mode(&file, mode);
        let (status, log) = run_refused(dir.path(), &[]);
        assert!(!status.success(), "mode {mode:o} was accepted");
        assert!(log.contains("chmod 600"), "{log}");
    }
}

/// The soft open-file limit is raised to the hard one at start.
#[actix_web::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4)?.parse().ok())
        .expect("/proc/self/limits names the open-file limit");
    assert!(
        hard > 256,
        "this test needs a hard limit above 256, not {hard}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `sh` lowers the soft limit, then becomes the hub (same pid).
    let hub = hub_command(
        dir.path(),
        &[("STATUSHUB_BIND", Some(&format!("127.0.0.1:{port}")))],
    );
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -S -n 256 && exec \"$0\" serve")
        .arg(hub.get_program())
        .envs(
            hub.get_envs()
                .filter_map(|(key, value)| Some((key, value?))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(started.elapsed() < HANG_GUARD, "the hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], hard.to_string(), "soft limit: {line}");
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[actix_web::test]
async fn an_empty_presented_token_is_nobody() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for path in [
        "/webhooks/health?access_token=",
        "/metrics?access_token=",
        "/api/v1/stream?access_token=",
    ] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let response = client
        .get(app.url("/webhooks/health"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(app.url("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=&hub.challenge=42"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// Parser errors quote what they choke on; a 100 KB string where a list
/// belongs must not become a 100 KB dead-letter reason, log line or answer.
#[actix_web::test]
async fn errors_about_huge_input_stay_short() {
    let huge = "x".repeat(100_000);
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"changes":[{{"field":"messages","value":{{"statuses":"{huge}"}}}}]}}]}}"#
    );
    let app = spawn_app().await;
    let response = app.post_whatsapp_bytes(body.clone().into_bytes()).await;
    assert_eq!(response.status(), 200);
    let letters: Vec<serde_json::Value> = app
        .get("/webhooks/dead-letters", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.len() <= 600, "{} bytes of reason", reason.len());
    assert_eq!(
        letters[0]["body_bytes"],
        body.len(),
        "the body is kept whole"
    );

    let unsigned = spawn_app_with(|settings| settings.enable_webhook_verification = false).await;
    let response = unsigned.post_whatsapp_raw(body.into_bytes(), None).await;
    assert_eq!(response.status(), 400);
    let answer = response.text().await.unwrap();
    assert!(answer.len() <= 700, "{} bytes of answer", answer.len());
}
