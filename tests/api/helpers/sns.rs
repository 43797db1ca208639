//! Signing and posting SNS envelopes as AWS does, for tests that need SES
//! events over the real, verified `POST /webhooks/email` path.
//!
//! Signing is the crate's one SNS signer
//! ([`statushub::simulate::sns_signer::SnsSigner`]), which builds the string
//! to sign from AWS's documentation independently of the verifier and is
//! itself proven against AWS's genuine signatures. One key per test binary:
//! making an RSA key is the slow part.

use std::path::PathBuf;
use std::sync::LazyLock;

use serde_json::{Value, json};
use statushub::simulate::sns_signer::{SignatureVersion, SnsSigner as CrateSigner};

use super::TestApp;

/// The SNS host every signed envelope names.
pub const SNS_TEST_HOST: &str = "sns.eu-west-1.amazonaws.com";
/// The certificate's file name in the cert dir and the last segment of
/// `SigningCertURL`.
pub const SNS_TEST_CERT_NAME: &str = "SimpleNotificationService-statushub-test.pem";
/// The topic of [`SnsSigner::notification`].
pub const SNS_TEST_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:statushub-tests";

/// The test binary's key, naming the test certificate, and that certificate.
static KEY: LazyLock<(CrateSigner, String)> = LazyLock::new(|| {
    let signer = CrateSigner::generate(format!("https://{SNS_TEST_HOST}/{SNS_TEST_CERT_NAME}"))
        .expect("failed to make the test signing key");
    let pem = signer
        .certificate_pem()
        .expect("failed to make the test certificate");
    (signer, pem)
});

/// Signs with the test key, whose certificate lies in a temporary cert dir
/// (give [`SnsSigner::cert_dir`] to the hub as `sns_cert_dir`).
#[derive(Debug)]
pub struct SnsSigner {
    dir: tempfile::TempDir,
}

impl SnsSigner {
    /// Puts the test certificate in a fresh cert dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs").join(SNS_TEST_CERT_NAME), &KEY.1).unwrap();
        SnsSigner { dir }
    }

    /// The directory to give the hub as `sns_cert_dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Returns the test key's certificate (PEM).
    pub fn certificate_pem() -> &'static str {
        &KEY.1
    }

    /// Returns `envelope` signed as SNS signs it, with signature `version`
    /// (`"1"` or `"2"`).
    pub fn sign(&self, mut envelope: Value, version: &str) -> Value {
        let version = SignatureVersion::parse(version).expect("version 1 or 2");
        KEY.0.sign(&mut envelope, version).unwrap();
        envelope
    }

    /// Returns a signed SNS `Notification` with id `message_id` carrying
    /// `message` (an SES event), as SNS delivers it.
    pub fn notification(&self, message_id: &str, message: &Value, version: &str) -> Value {
        let envelope = json!({
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": SNS_TEST_TOPIC,
            "Message": message.to_string(),
            "Timestamp": "2024-05-01T12:00:00.000Z",
            "UnsubscribeURL": format!(
                "https://{SNS_TEST_HOST}/?Action=Unsubscribe&SubscriptionArn={SNS_TEST_TOPIC}:sub"
            ),
        });
        self.sign(envelope, version)
    }
}

impl TestApp {
    /// Posts `envelope` to the email webhook as SNS does: JSON as
    /// `text/plain`, with the message type and id headers.
    pub async fn post_sns(&self, envelope: &Value) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/webhooks/email"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("user-agent", "Amazon Simple Notification Service Agent")
            .header(
                "x-amz-sns-message-type",
                envelope["Type"].as_str().unwrap_or_default(),
            );
        if let Some(id) = envelope["MessageId"].as_str() {
            request = request.header("x-amz-sns-message-id", id);
        }
        request.body(envelope.to_string()).send().await.unwrap()
    }
}
