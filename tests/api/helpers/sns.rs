//! Signing and posting SNS envelopes as AWS does, for tests that need SES
//! events over the real, verified `POST /webhooks/email` path.
//!
//! The rules (the signed keys, in order, each as `Key\nValue\n`; RSA
//! PKCS#1 v1.5 over SHA1 for version 1 and SHA256 for version 2) are written
//! here from AWS's documentation, independently of statushub's verifier. A
//! key and a self-signed certificate are made once per signer by the
//! `openssl` CLI; the hub reads the certificate from its `SNS_CERT_DIR`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::TestApp;

/// The SNS host every signed envelope names.
pub const SNS_TEST_HOST: &str = "sns.eu-west-1.amazonaws.com";
/// The certificate's file name in the cert dir and the last segment of
/// `SigningCertURL`.
const CERT_NAME: &str = "SimpleNotificationService-statushub-helpers.pem";
/// The topic of [`SnsSigner::notification`].
pub const SNS_TEST_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:statushub-tests";

/// An RSA key and a self-signed certificate for it: the certificate in
/// [`SnsSigner::cert_dir`] (give it to the hub as `sns_cert_dir`).
#[derive(Debug)]
pub struct SnsSigner {
    dir: tempfile::TempDir,
}

impl SnsSigner {
    /// Makes a fresh key and certificate (needs the `openssl` CLI: a test
    /// without it fails).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        let output = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=sns.amazonaws.com"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("certs").join(CERT_NAME))
            .output()
            .expect("signing SNS envelopes needs the openssl cli");
        assert!(output.status.success(), "{output:?}");
        SnsSigner { dir }
    }

    /// The directory to give the hub as `sns_cert_dir`.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Returns `envelope` signed as SNS signs it, with signature `version`
    /// (`"1"` or `"2"`).
    pub fn sign(&self, mut envelope: Value, version: &str) -> Value {
        envelope["SignatureVersion"] = version.into();
        envelope["SigningCertURL"] = format!("https://{SNS_TEST_HOST}/{CERT_NAME}").into();
        let keys: &[&str] = if envelope["Type"] == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let canonical: String = keys
            .iter()
            .filter(|key| envelope.get(**key).is_some_and(|value| !value.is_null()))
            .map(|key| format!("{key}\n{}\n", envelope[*key].as_str().unwrap()))
            .collect();
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        let mut child = Command::new("openssl")
            .args(["dgst", digest, "-sign"])
            .arg(self.dir.path().join("key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(canonical.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        envelope["Signature"] = STANDARD.encode(output.stdout).into();
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
