//! Signs SNS messages the way AWS does, for `statushub simulate` and for the
//! tests of the hub's verifier: RSASSA-PKCS1-v1_5 (SHA1 for
//! SignatureVersion 1, SHA256 for 2) over AWS's canonical string, under an
//! RSA key whose self-signed certificate the hub finds in its
//! `SNS_CERT_DIR`.
//!
//! The canonical string is built here, from AWS's documentation ("Verifying
//! the signatures of Amazon SNS messages"), and not by the verifier's
//! [`crate::webhooks::ses::SnsEnvelope::string_to_sign`]: messages signed
//! here are then an independent check of the verifier, and the verifier
//! does not depend on this module. A test proves this string is AWS's: for
//! AWS's own signed notifications it is what AWS's signature signs.
//!
//! `statushub simulate` keeps its key and certificate in the hub's cert dir
//! (made once, then reused); tests make a key with [`SnsSigner::generate`]
//! (slow in debug builds unless the bignum crates are optimised, as
//! Cargo.toml does; still, make one per test binary).

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::pkcs8::der::zeroize::Zeroizing;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use rsa::signature::Keypair as _;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{DecodePem as _, Encode as _, EncodePem as _};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// Size of the generated RSA key.
const RSA_BITS: usize = 2048;
/// Lifetime of the generated certificate (the hub does not check it).
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Subject (and issuer) of the generated certificate.
const CERT_SUBJECT: &str = "CN=statushub simulate,O=statushub";

/// The keys AWS signs of a `Notification`, in the signed (byte) order;
/// `Subject` only when the message has one.
const NOTIFICATION_KEYS: [&str; 6] = [
    "Message",
    "MessageId",
    "Subject",
    "Timestamp",
    "TopicArn",
    "Type",
];
/// The keys AWS signs of a `SubscriptionConfirmation` or an
/// `UnsubscribeConfirmation`, in the signed (byte) order.
const CONFIRMATION_KEYS: [&str; 7] = [
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
];

/// An SNS `SignatureVersion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureVersion {
    /// `1`: SHA1withRSA.
    V1,
    /// `2`: SHA256withRSA.
    V2,
}

impl SignatureVersion {
    /// Parses the wire value, `1` or `2`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1" => Some(SignatureVersion::V1),
            "2" => Some(SignatureVersion::V2),
            _ => None,
        }
    }

    /// Returns the wire value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SignatureVersion::V1 => "1",
            SignatureVersion::V2 => "2",
        }
    }
}

/// Returns the keys AWS signs of `envelope` (an SNS message as JSON), in the
/// signed order: for a `Notification`, `Message`, `MessageId`, `Subject`
/// (only when present and not null), `Timestamp`, `TopicArn`, `Type`; for
/// the two confirmations, `Message`, `MessageId`, `SubscribeURL`,
/// `Timestamp`, `Token`, `TopicArn`, `Type`.
///
/// Fails when `Type` is none of the three, or a key the type signs (but
/// `Subject`) is absent.
pub fn signed_keys(envelope: &Value) -> anyhow::Result<Vec<&'static str>> {
    let keys: &[&'static str] = match envelope.get("Type").and_then(Value::as_str) {
        Some("Notification") => &NOTIFICATION_KEYS,
        Some("SubscriptionConfirmation" | "UnsubscribeConfirmation") => &CONFIRMATION_KEYS,
        other => bail!("no sns message type {other:?}"),
    };
    let present = |key: &str| envelope.get(key).is_some_and(|value| !value.is_null());
    let mut signed = Vec::with_capacity(keys.len());
    for &key in keys {
        if present(key) {
            signed.push(key);
        } else if key != "Subject" {
            bail!("the sns message has no {key}");
        }
    }
    Ok(signed)
}

/// Returns the string AWS signs for `envelope`: each of its
/// [`signed_keys`] as `Key\nValue\n`, with the JSON-decoded value.
///
/// Line breaks are written as they are: this builds forgeries too (a
/// `MessageId` holding `\nSubject\n…`), for the verifier to refuse.
pub fn string_to_sign(envelope: &Value) -> anyhow::Result<String> {
    let mut canonical = String::new();
    for key in signed_keys(envelope)? {
        let value = envelope[key]
            .as_str()
            .with_context(|| format!("the sns message's {key} is not a string"))?;
        canonical.push_str(key);
        canonical.push('\n');
        canonical.push_str(value);
        canonical.push('\n');
    }
    Ok(canonical)
}

/// An RSA key that signs SNS messages naming `cert_url` as their
/// `SigningCertURL`; the hub verifies them when that URL's last segment
/// names the key's certificate ([`SnsSigner::certificate_pem`]) in its
/// `SNS_CERT_DIR`.
#[derive(Clone)]
pub struct SnsSigner {
    key: RsaPrivateKey,
    cert_url: String,
}

impl std::fmt::Debug for SnsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsSigner")
            .field("cert_url", &self.cert_url)
            .finish_non_exhaustive()
    }
}

impl SnsSigner {
    /// Returns a signer with a new RSA-2048 key. Slow in an unoptimised
    /// build of the bignum crates.
    pub fn generate(cert_url: impl Into<String>) -> anyhow::Result<Self> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
            .map_err(|error| anyhow!("failed to generate an rsa key: {error}"))?;
        Ok(SnsSigner {
            key,
            cert_url: cert_url.into(),
        })
    }

    /// Returns a signer with the RSA key of a PKCS#8 PEM (`BEGIN PRIVATE
    /// KEY`, as `openssl req -nodes` writes it).
    pub fn from_pkcs8_pem(pem: &str, cert_url: impl Into<String>) -> anyhow::Result<Self> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|error| anyhow!("not a pkcs#8 rsa key: {error}"))?;
        Ok(SnsSigner {
            key,
            cert_url: cert_url.into(),
        })
    }

    /// Returns this signer with another `SigningCertURL`.
    pub fn with_cert_url(&self, cert_url: impl Into<String>) -> Self {
        SnsSigner {
            key: self.key.clone(),
            cert_url: cert_url.into(),
        }
    }

    /// Returns the `SigningCertURL` the signed messages name.
    pub fn cert_url(&self) -> &str {
        &self.cert_url
    }

    /// Returns the key's public half.
    pub fn public_key(&self) -> RsaPublicKey {
        RsaPublicKey::from(&self.key)
    }

    /// Tells whether the PEM certificate `pem` holds this signer's public key.
    pub fn matches_certificate(&self, pem: &[u8]) -> bool {
        certificate_key(pem).is_some_and(|key| key == self.public_key())
    }

    /// Returns the key as PKCS#8 PEM, for simulate to keep.
    pub(super) fn private_key_pem(&self) -> anyhow::Result<Zeroizing<String>> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| anyhow!("failed to encode the rsa key: {error}"))
    }

    /// Returns a new PEM self-signed X.509 certificate for the key
    /// (SHA256withRSA, random serial number).
    pub fn certificate_pem(&self) -> anyhow::Result<String> {
        self_signed_certificate(&SigningKey::<Sha256>::new(self.key.clone()))
    }

    /// Returns the base64 RSASSA-PKCS1-v1_5 signature of `text`, with SHA1
    /// for version 1 and SHA256 for version 2.
    pub fn signature(&self, version: SignatureVersion, text: &str) -> anyhow::Result<String> {
        let signed = match version {
            SignatureVersion::V1 => self
                .key
                .sign(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(text)),
            SignatureVersion::V2 => self
                .key
                .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(text)),
        };
        let signature =
            signed.map_err(|error| anyhow!("failed to sign an sns message: {error}"))?;
        Ok(STANDARD.encode(signature))
    }

    /// Signs `envelope` (an SNS message as JSON) as SNS does: sets
    /// `SignatureVersion`, `SigningCertURL` (this signer's) and `Signature`
    /// over [`string_to_sign`].
    pub fn sign(&self, envelope: &mut Value, version: SignatureVersion) -> anyhow::Result<()> {
        let signature = self.signature(version, &string_to_sign(envelope)?)?;
        let object = envelope
            .as_object_mut()
            .context("an sns message is a json object")?;
        object.insert("SignatureVersion".to_owned(), version.as_str().into());
        object.insert("SigningCertURL".to_owned(), self.cert_url.clone().into());
        object.insert("Signature".to_owned(), signature.into());
        Ok(())
    }
}

/// Returns a PEM self-signed X.509 certificate for `key`'s public key,
/// signed by `key` (SHA256withRSA).
fn self_signed_certificate(key: &SigningKey<Sha256>) -> anyhow::Result<String> {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.verifying_key())
        .map_err(|error| anyhow!("failed to encode the public key: {error}"))?;
    // A positive serial number, random so that replaced certificates differ.
    let serial = SerialNumber::from((rand::random::<u64>() >> 1) | 1);
    let validity = Validity::from_now(CERT_VALIDITY)
        .map_err(|error| anyhow!("failed to date the certificate: {error}"))?;
    let subject: Name = CERT_SUBJECT
        .parse()
        .map_err(|error| anyhow!("invalid certificate subject: {error}"))?;
    let builder = CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, key)
        .map_err(|error| anyhow!("failed to prepare the certificate: {error}"))?;
    let certificate = builder
        .build::<Signature>()
        .map_err(|error| anyhow!("failed to sign the certificate: {error}"))?;
    certificate
        .to_pem(LineEnding::LF)
        .map_err(|error| anyhow!("failed to encode the certificate: {error}"))
}

/// Returns the RSA public key of a PEM certificate, if it holds one.
fn certificate_key(pem: &[u8]) -> Option<RsaPublicKey> {
    let certificate = Certificate::from_pem(pem).ok()?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .ok()?;
    RsaPublicKey::from_public_key_der(&spki).ok()
}

/// `SigningCertURL` of [`test_signer`]'s messages.
#[cfg(test)]
pub(crate) const TEST_CERT_URL: &str =
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-statushub-test.pem";

/// The signer the crate's unit tests share, naming [`TEST_CERT_URL`]: one
/// RSA key per test binary, since making one is the slow part.
#[cfg(test)]
pub(crate) fn test_signer() -> &'static SnsSigner {
    static SIGNER: std::sync::LazyLock<SnsSigner> = std::sync::LazyLock::new(|| {
        SnsSigner::generate(TEST_CERT_URL).expect("failed to generate the test signing key")
    });
    &SIGNER
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;
    use crate::webhooks::ses::sns::shared_vectors;

    /// AWS's certificate beside the shared SNS vectors.
    const AWS_CERT_NAME: &str = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";

    fn notification() -> Value {
        json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-2:1:topic",
            "Subject": "Hi",
            "Message": "{\"a\":\"b\\nc\"}\nsecond line",
            "Timestamp": "2022-07-28T22:53:49.654Z",
            "SignatureVersion": "2",
            "Signature": "c2ln",
            "SigningCertURL": "https://sns.us-east-2.amazonaws.com/x.pem",
            "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {"k": {"Type": "String", "Value": "v"}}
        })
    }

    fn confirmation(kind: &str) -> Value {
        json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37f",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37f",
            "Timestamp": "2012-04-26T20:45:04.751Z",
        })
    }

    /// Tells whether `signature` is AWS's kind of signature of `text` under
    /// `key`, checked with the `rsa` crate directly (not the hub's verifier).
    fn signs(key: &RsaPublicKey, version: SignatureVersion, text: &str, signature: &[u8]) -> bool {
        match version {
            SignatureVersion::V1 => {
                key.verify(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(text), signature)
            }
            SignatureVersion::V2 => key.verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(text),
                signature,
            ),
        }
        .is_ok()
    }

    /// AWS's documented rules: the type's keys in byte order, `Key\nValue\n`,
    /// the subject only when present and not null, any other key ignored.
    #[test]
    fn canonical_strings_follow_aws_documented_rules() {
        let mut message = notification();
        assert_eq!(
            string_to_sign(&message).unwrap(),
            "Message\n{\"a\":\"b\\nc\"}\nsecond line\nMessageId\nm-1\nSubject\nHi\nTimestamp\n2022-07-28T22:53:49.654Z\n\
             TopicArn\narn:aws:sns:us-east-2:1:topic\nType\nNotification\n"
        );
        let without = "Message\n{\"a\":\"b\\nc\"}\nsecond line\nMessageId\nm-1\nTimestamp\n2022-07-28T22:53:49.654Z\n\
             TopicArn\narn:aws:sns:us-east-2:1:topic\nType\nNotification\n";
        message["Subject"] = Value::Null;
        assert_eq!(string_to_sign(&message).unwrap(), without);
        message.as_object_mut().unwrap().remove("Subject");
        assert_eq!(string_to_sign(&message).unwrap(), without);

        for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
            assert_eq!(
                string_to_sign(&confirmation(kind)).unwrap(),
                format!(
                    "Message\nYou have chosen to subscribe to the topic.\n\
                     MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n\
                     SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37f\n\
                     Timestamp\n2012-04-26T20:45:04.751Z\nToken\n2336412f37f\n\
                     TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\n{kind}\n"
                )
            );
        }

        let mut unknown = notification();
        unknown["Type"] = "Other".into();
        let mut no_token = confirmation("SubscriptionConfirmation");
        no_token.as_object_mut().unwrap().remove("Token");
        let mut numeric = notification();
        numeric["MessageId"] = 7.into();
        for broken in [unknown, no_token, numeric, json!("Notification")] {
            assert!(string_to_sign(&broken).is_err(), "{broken}");
        }
    }

    /// The proof that the canonical string is AWS's: for each genuine
    /// AWS-signed notification (aws/aws-php-sns-message-validator fixtures,
    /// SignatureVersion 1 and 2), AWS's signature verifies over the string
    /// built here, under AWS's certificate; and over no other.
    #[test]
    fn canonical_strings_of_aws_signed_vectors_verify_under_aws_certificate() {
        let dir = shared_vectors("sns");
        let pem = std::fs::read(dir.join(AWS_CERT_NAME)).unwrap();
        let key = certificate_key(&pem).expect("AWS's certificate holds an RSA key");
        let mut versions = HashSet::new();
        for name in [
            "php2022-notification-v1-subject.json",
            "php2022-notification-v2-subject.json",
        ] {
            let vector: Value =
                serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
            let version = SignatureVersion::parse(vector["SignatureVersion"].as_str().unwrap())
                .expect("version 1 or 2");
            versions.insert(version);
            let signature = STANDARD
                .decode(vector["Signature"].as_str().unwrap())
                .unwrap();
            let canonical = string_to_sign(&vector).unwrap();
            assert!(
                canonical.contains("\nSubject\nHello world\n"),
                "{canonical}"
            );
            assert!(signs(&key, version, &canonical, &signature), "{name}");

            let other = if version == SignatureVersion::V1 {
                SignatureVersion::V2
            } else {
                SignatureVersion::V1
            };
            let mut no_subject = vector.clone();
            no_subject.as_object_mut().unwrap().remove("Subject");
            for (what, version, text) in [
                ("other digest", other, canonical.clone()),
                ("no subject", version, string_to_sign(&no_subject).unwrap()),
                (
                    "no final newline",
                    version,
                    canonical[..canonical.len() - 1].to_owned(),
                ),
                (
                    "changed message",
                    version,
                    canonical.replacen("Hello", "Hallo", 1),
                ),
            ] {
                assert!(!signs(&key, version, &text, &signature), "{name}: {what}");
            }
        }
        assert_eq!(versions.len(), 2, "both signature versions are covered");
    }

    /// `sign` sets the version, the certificate URL and a PKCS#1 v1.5
    /// signature (SHA1 or SHA256) of the canonical string, deterministic
    /// for one key and text.
    #[test]
    fn sign_sets_the_signature_fields() {
        let signer = test_signer();
        let key = signer.public_key();
        for version in [SignatureVersion::V1, SignatureVersion::V2] {
            let mut message = confirmation("SubscriptionConfirmation");
            signer.sign(&mut message, version).unwrap();
            assert_eq!(message["SignatureVersion"], version.as_str());
            assert_eq!(message["SigningCertURL"], TEST_CERT_URL);
            let signature = STANDARD
                .decode(message["Signature"].as_str().unwrap())
                .unwrap();
            assert_eq!(signature.len(), RSA_BITS / 8);
            let canonical = string_to_sign(&message).unwrap();
            assert!(signs(&key, version, &canonical, &signature));
            assert_eq!(
                signer.signature(version, &canonical).unwrap(),
                message["Signature"]
            );
        }
        let moved = signer.with_cert_url("https://sns.us-east-1.amazonaws.com/other.pem");
        assert_eq!(
            moved.cert_url(),
            "https://sns.us-east-1.amazonaws.com/other.pem"
        );
        assert_eq!(moved.public_key(), key);
        assert_eq!(
            certificate_key(signer.certificate_pem().unwrap().as_bytes()),
            Some(key)
        );
        assert!(signer.sign(&mut json!([]), SignatureVersion::V2).is_err());
    }
}
