//! The harness of the SES/SNS tests: the signer and its certificate
//! directory, SNS envelopes and SES events as AWS writes them, what each
//! event should do to a campaign, posting as SNS does, and local stand-ins
//! for SNS's `ConfirmSubscription` endpoint and its certificate host.

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use statushub::simulate::sns_signer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

/// The region host every test message claims to come from.
pub const SNS_HOST: &str = crate::helpers::SNS_TEST_HOST;
/// The test certificate's file name in the cert dir, and the last segment of
/// its `SigningCertURL`.
pub const CERT_NAME: &str = crate::helpers::SNS_TEST_CERT_NAME;
/// A certificate file name no cert dir holds: the hub downloads it.
pub const DOWNLOAD_CERT_NAME: &str = "SimpleNotificationService-statushub-download.pem";
pub const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-events";
pub const OTHER_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:someone-else";
pub const SUBSCRIPTION_ARN: &str =
    "arn:aws:sns:eu-west-1:123456789012:ses-events:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55";
pub const TENANT: &str = "t1";

/// The test signer: the crate's SNS signer with one key per test binary,
/// its certificate in a temporary `SNS_CERT_DIR`, named `CERT_NAME` on
/// `SNS_HOST`.
pub use crate::helpers::SnsSigner as Signer;

/// Returns the keys AWS signs for the envelope's type that it holds, in
/// the signed order (the crate signer's own reading of AWS's documentation,
/// independent of the verifier's).
pub fn signed_keys(envelope: &Value) -> Vec<&'static str> {
    sns_signer::signed_keys(envelope).unwrap()
}

/// Returns the string AWS signs: each signed key as `Key\nValue\n`.
pub fn canonical(envelope: &Value) -> String {
    sns_signer::string_to_sign(envelope).unwrap()
}

/// Returns `text` with its last character changed.
pub fn flip_last(text: &str) -> String {
    let mut text = text.to_owned();
    let last = text.pop().unwrap();
    text.push(if last == 'x' { 'y' } else { 'x' });
    text
}

pub fn sns_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An unsigned SNS notification of `topic` carrying `message`.
pub fn notification_of(topic: &str, message: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": sns_message_id(),
        "TopicArn": topic,
        "Message": message,
        "Timestamp": "2024-05-01T12:00:00.123Z",
        "UnsubscribeURL": format!("https://{SNS_HOST}/?Action=Unsubscribe&SubscriptionArn={topic}:sub"),
    })
}

pub fn notification(message: &str) -> Value {
    notification_of(TOPIC, message)
}

/// An unsigned `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
pub fn confirmation(kind: &str, topic: &str, token: &str) -> Value {
    json!({
        "Type": kind,
        "MessageId": sns_message_id(),
        "Token": token,
        "TopicArn": topic,
        "Message": format!("You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": subscribe_url(topic, token),
        "Timestamp": "2024-05-01T12:00:00.000Z",
    })
}

pub fn subscribe_url(topic: &str, token: &str) -> String {
    format!("https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}")
}

/// The minimal SES event of every type: name, key of its object, the object.
#[rustfmt::skip]
pub const SES_EVENTS: [(&str, &str, &str); 10] = [
    ("Send", "send", "{}"),
    ("Delivery", "delivery", r#"{"timestamp":"2024-05-01T12:00:02.000Z","recipients":["a@example.com"],"smtpResponse":"250 ok"}"#),
    ("Open", "open", r#"{"timestamp":"2024-05-01T12:00:05.000Z","userAgent":"Mozilla/5.0","ipAddress":"192.0.2.1"}"#),
    ("Click", "click", r#"{"timestamp":"2024-05-01T12:00:06.000Z","link":"https://example.com/","linkTags":{"a":["b"]}}"#),
    ("Bounce", "bounce", r#"{"timestamp":"2024-05-01T12:00:02.000Z","bounceType":"Permanent","bounceSubType":"General",
        "bouncedRecipients":[{"emailAddress":"a@example.com","diagnosticCode":"smtp; 550 5.1.1 user unknown"}]}"#),
    ("Complaint", "complaint", r#"{"timestamp":"2024-05-01T12:00:09.000Z","complaintFeedbackType":"abuse",
        "complainedRecipients":[{"emailAddress":"a@example.com"}]}"#),
    ("Reject", "reject", r#"{"reason":"Bad content"}"#),
    ("Rendering Failure", "failure", r#"{"templateName":"T","errorMessage":"Attribute 'x' is not present"}"#),
    ("DeliveryDelay", "deliveryDelay", r#"{"timestamp":"2024-05-01T12:00:03.000Z","delayType":"MailboxFull"}"#),
    ("Subscription", "subscription", r#"{"timestamp":"2024-05-01T12:00:04.000Z","contactList":"L"}"#),
];

/// Returns the SES event `name` about `mail_id` as SES publishes it, typed
/// by `form`: `eventType` (configuration sets) or `notificationType`
/// (identity notifications).
pub fn ses_event(form: &str, name: &str, mail_id: &str) -> String {
    let (_, key, object) = SES_EVENTS.iter().find(|row| row.0 == name).unwrap();
    let mut message = json!({
        form: name,
        "mail": {
            "timestamp": "2024-05-01T12:00:00.000Z",
            "source": "sender@example.com",
            "messageId": mail_id,
            "destination": ["a@example.com"],
        },
    });
    message[*key] = serde_json::from_str(object).unwrap();
    message.to_string()
}

/// The statuses a message has seen (with the implied ones) and its current
/// status after the SES event `name` alone (the spec's SES mapping).
pub fn expected_after(name: &str) -> (&'static [&'static str], &'static str) {
    match name {
        "Send" => (&["sent"], "sent"),
        "Delivery" => (&["sent", "delivered"], "delivered"),
        "Open" => (&["sent", "delivered", "read"], "read"),
        "Click" => (&["sent", "delivered", "read", "clicked"], "read"),
        "Complaint" => (&["sent", "delivered", "complained"], "delivered"),
        "Bounce" | "Reject" | "Rendering Failure" => (&["failed"], "failed"),
        "DeliveryDelay" | "Subscription" => (&[], "pending"),
        other => panic!("no expectation for {other}"),
    }
}

/// Returns the counters (as `counts_only` shapes them) of a campaign whose
/// messages saw these events, one message each.
pub fn expected_counts<'a>(events: impl IntoIterator<Item = &'a str>) -> Value {
    let mut counts = json!({"total": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "clicked": 0,
        "complained": 0, "by_status": {"pending": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0}});
    let bump = |value: &mut Value| *value = json!(value.as_i64().unwrap() + 1);
    for name in events {
        let (seen, current) = expected_after(name);
        bump(&mut counts["total"]);
        for status in seen.iter().filter(|status| **status != "failed") {
            bump(&mut counts[*status]);
        }
        if current == "failed" {
            bump(&mut counts["failed"]);
        }
        bump(&mut counts["by_status"][current]);
    }
    counts
}

/// Posts `envelope` as SNS does (JSON as `text/plain`, the message type
/// header), after `customize` adjusted the request.
pub async fn post_sns_with(
    app: &TestApp,
    path: &str,
    envelope: &Value,
    customize: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let request = app
        .client
        .post(app.url(path))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("user-agent", "Amazon Simple Notification Service Agent")
        .header(
            "x-amz-sns-message-type",
            envelope["Type"].as_str().unwrap_or_default(),
        )
        .body(envelope.to_string());
    // A forged id with a line break cannot be a header value.
    let message_id = envelope["MessageId"].as_str().unwrap_or_default();
    let request = if message_id.contains(['\n', '\r']) {
        request
    } else {
        request.header("x-amz-sns-message-id", message_id)
    };
    customize(request).send().await.unwrap()
}

pub async fn post_sns(app: &TestApp, envelope: &Value) -> reqwest::Response {
    post_sns_with(app, "/webhooks/email", envelope, |request| request).await
}

/// Posts and returns the receipt, asserting 200.
pub async fn deliver(app: &TestApp, envelope: &Value) -> Value {
    let response = post_sns(app, envelope).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

pub fn receipt_json(applied: u64, duplicates: u64, unmatched: u64, dead_lettered: u64) -> Value {
    json!({"received": applied + duplicates + unmatched, "applied": applied, "duplicates": duplicates,
           "unmatched": unmatched, "dead_lettered": dead_lettered})
}

pub async fn register_email(app: &TestApp, campaign: &str, ids: &[&str]) {
    let messages: Vec<Value> = ids
        .iter()
        .map(|id| json!({"tenant_id": TENANT, "campaign_id": campaign, "channel": "email", "provider_message_id": id}))
        .collect();
    let receipt = app.register(&Value::Array(messages)).await;
    assert_eq!(receipt["registered"], ids.len(), "{receipt}");
}

/// Rows of every table a webhook writes to: events, buffered statuses,
/// dead letters.
pub async fn stored(app: &TestApp) -> [i64; 3] {
    [
        app.count_rows("status_events").await,
        app.count_rows("unmatched_statuses").await,
        app.count_rows("dead_letters").await,
    ]
}

pub async fn health_subscriptions(app: &TestApp) -> Vec<Value> {
    let response = app.get("/webhooks/health", ADMIN_TOKEN).await;
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    health["sns_subscriptions"].as_array().unwrap().clone()
}

pub async fn spawn_ses_app(
    signer: &Signer,
    customize: impl FnOnce(&mut statushub::config::Settings),
) -> TestApp {
    let cert_dir = signer.cert_dir();
    spawn_app_with(|settings| {
        settings.sns_cert_dir = Some(cert_dir);
        customize(settings);
    })
    .await
}

/// What a stand-in answers a request with: status, content type and body;
/// `None` closes the connection unanswered.
type Answer = Option<(u16, &'static str, String)>;

/// Serves HTTP/1.1 on a local port until the test ends: records each request
/// line, then answers with what `answer` returns. Returns the base URL and
/// the recorded request lines.
async fn serve(answer: impl Fn() -> Answer + 'static) -> (reqwest::Url, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    actix_web::rt::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => head.extend_from_slice(&buffer[..read]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push(line);
            let Some((code, content_type, body)) = answer() else {
                continue; // the socket is dropped: closed, unanswered
            };
            let response = format!(
                "HTTP/1.1 {code} Stand-in\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (base, requests)
}

/// A local HTTP server standing in for SNS's `ConfirmSubscription` endpoint:
/// records each request line and answers with `status`.
pub struct StandIn {
    pub base: reqwest::Url,
    requests: Arc<Mutex<Vec<String>>>,
    pub status: Arc<AtomicU16>,
}

impl StandIn {
    pub async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let answer = Arc::clone(&status);
        let (base, requests) = serve(move || {
            let code = answer.load(Ordering::SeqCst);
            let body = if code == 200 {
                format!(
                    "<ConfirmSubscriptionResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\
                     <ConfirmSubscriptionResult><SubscriptionArn>{SUBSCRIPTION_ARN}</SubscriptionArn>\
                     </ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
                )
            } else {
                "<ErrorResponse><Error><Code>InternalFailure</Code></Error></ErrorResponse>".to_owned()
            };
            Some((code, "text/xml", body))
        })
        .await;
        StandIn {
            base,
            requests,
            status,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A `SigningCertURL` on an SNS host naming a certificate no cert dir holds,
/// so the hub downloads it.
pub fn download_cert_url() -> String {
    format!("https://{SNS_HOST}/{DOWNLOAD_CERT_NAME}")
}

/// Returns `envelope` (signed) naming `url` as its certificate; the URL is
/// not signed, so the signature still fits.
pub fn naming_certificate(mut envelope: Value, url: &str) -> Value {
    envelope["SigningCertURL"] = url.into();
    envelope
}

/// How [`CertStandIn`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertAnswer {
    /// 200 with the test certificate.
    Serve,
    /// 500.
    Fail,
    /// Closes the connection without answering.
    Close,
}

/// A local HTTP server standing in for SNS's certificate host: answers every
/// path as told ([`CertAnswer`]) and records each request line.
pub struct CertStandIn {
    pub base: reqwest::Url,
    requests: Arc<Mutex<Vec<String>>>,
    answer: Arc<Mutex<CertAnswer>>,
}

impl CertStandIn {
    pub async fn start() -> Self {
        let answer = Arc::new(Mutex::new(CertAnswer::Serve));
        let current = Arc::clone(&answer);
        let (base, requests) = serve(move || match *current.lock().unwrap() {
            CertAnswer::Serve => Some((
                200,
                "application/x-pem-file",
                Signer::certificate_pem().to_owned(),
            )),
            CertAnswer::Fail => Some((500, "text/plain", "stand-in failure".to_owned())),
            CertAnswer::Close => None,
        })
        .await;
        CertStandIn {
            base,
            requests,
            answer,
        }
    }

    /// Answers the next requests so.
    pub fn answer(&self, answer: CertAnswer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Returns `envelope` with its `Subject` moved into `MessageId`: the string
/// to sign reads the same (`MessageId\n<id>\nSubject\n<subject>\n`), so
/// the old signature still fits, under a new message id.
pub fn subject_shifted_into_message_id(envelope: &Value) -> Value {
    let mut shifted = envelope.clone();
    let subject = shifted.as_object_mut().unwrap().remove("Subject").unwrap();
    shifted["MessageId"] = format!(
        "{}\nSubject\n{}",
        envelope["MessageId"].as_str().unwrap(),
        subject.as_str().unwrap()
    )
    .into();
    assert_eq!(canonical(&shifted), canonical(envelope));
    shifted
}

/// Returns `envelope` with its keys spelled as an AWS Lambda relay writes
/// them: `SigningCertUrl`, `UnsubscribeUrl`.
pub fn in_lambda_spelling(envelope: &Value) -> Value {
    let mut lambda = envelope.clone();
    let object = lambda.as_object_mut().unwrap();
    for (aws, relayed) in [
        ("SigningCertURL", "SigningCertUrl"),
        ("UnsubscribeURL", "UnsubscribeUrl"),
    ] {
        let value = object.remove(aws).unwrap();
        object.insert(relayed.to_owned(), value);
    }
    lambda
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}
