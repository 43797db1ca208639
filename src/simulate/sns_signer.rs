//! Simulate's SNS signing key: an RSA-2048 key and a self-signed certificate
//! kept in the hub's `SNS_CERT_DIR`, and the signed SNS notifications made
//! with them.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use rsa::signature::{Keypair as _, SignatureEncoding as _, Signer as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::json;
use sha2::Sha256;
use x509_cert::Certificate;
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{DecodePem as _, Encode as _, EncodePem as _};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

use crate::webhooks::ses::SnsEnvelope;

/// File name of simulate's self-signed SNS signing certificate in the cert
/// dir: the last path segment of its `SigningCertURL`, which is where the
/// hub looks for it.
pub const SNS_CERT_NAME: &str = "SimpleNotificationService-statushub-simulate.pem";
/// File name of simulate's private key beside the certificate (PKCS#8 PEM,
/// mode 0600). Not a `.pem`, so no `SigningCertURL` can name it.
pub const SNS_KEY_NAME: &str = "statushub-simulate.key";
/// `SigningCertURL` of every simulated notification: a URL the hub accepts
/// (https, `sns.<region>.amazonaws.com`, `.pem`) and whose last segment is
/// [`SNS_CERT_NAME`], so the hub finds the certificate in its cert dir and
/// never downloads it.
const SNS_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-statushub-simulate.pem";
/// Size of the generated RSA key.
const RSA_BITS: usize = 2048;
/// Lifetime of the generated certificate (the hub does not check it).
const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Subject (and issuer) of the generated certificate.
const CERT_SUBJECT: &str = "CN=statushub simulate,O=statushub";
/// The `Subject` SES gives its event notifications.
const SES_SUBJECT: &str = "Amazon SES Email Event Notification";

/// What [`SnsSigner::load_or_create`] found in the cert dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CertOrigin {
    /// The certificate matched the key and was kept.
    Reused,
    /// There was no certificate; one was made.
    Created,
    /// The certificate did not match the key (or was unreadable) and was
    /// replaced; a hub that already loaded it must be restarted.
    Replaced,
}

/// Signs SNS notifications with simulate's RSA key, whose self-signed
/// certificate lies in the hub's `SNS_CERT_DIR`.
pub(super) struct SnsSigner {
    key: SigningKey<Sha256>,
}

impl SnsSigner {
    /// Loads the key and certificate from `dir` (created if needed), making
    /// what is missing: an RSA-2048 key, written once with mode 0600, and a
    /// self-signed certificate for it, rewritten when it does not match the
    /// key.
    pub(super) fn load_or_create(dir: &Path) -> anyhow::Result<(Self, CertOrigin)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the sns cert dir {}", dir.display()))?;
        let private = load_or_create_key(&dir.join(SNS_KEY_NAME))?;
        let public = RsaPublicKey::from(&private);
        let key = SigningKey::<Sha256>::new(private);
        let cert_path = dir.join(SNS_CERT_NAME);
        let origin = match std::fs::read(&cert_path) {
            Ok(pem) if certificate_key(&pem).as_ref() == Some(&public) => {
                return Ok((SnsSigner { key }, CertOrigin::Reused));
            }
            Ok(_) => CertOrigin::Replaced,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => CertOrigin::Created,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("failed to read {}", cert_path.display()));
            }
        };
        let pem = self_signed_certificate(&key)?;
        write_replacing(&cert_path, pem.as_bytes())?;
        Ok((SnsSigner { key }, origin))
    }

    /// Returns the body of a signed SNS `Notification` (SignatureVersion 2)
    /// carrying `message`, as SNS posts it.
    pub(super) fn notification(
        &self,
        topic_arn: &str,
        message_id: &str,
        message: String,
        timestamp: String,
    ) -> anyhow::Result<Vec<u8>> {
        let mut envelope = SnsEnvelope {
            r#type: "Notification".to_owned(),
            message_id: message_id.to_owned(),
            topic_arn: topic_arn.to_owned(),
            subject: Some(SES_SUBJECT.to_owned()),
            message,
            timestamp,
            signature_version: "2".to_owned(),
            signature: String::new(),
            signing_cert_url: SNS_CERT_URL.to_owned(),
            subscribe_url: None,
            token: None,
            unsubscribe_url: Some(format!(
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:statushub-simulate"
            )),
        };
        // AWS's canonical string, as the hub rebuilds it to verify.
        let signed = envelope.string_to_sign()?;
        let signature: Signature = self
            .key
            .try_sign(signed.as_bytes())
            .map_err(|error| anyhow!("failed to sign an sns message: {error}"))?;
        envelope.signature = STANDARD.encode(signature.to_bytes());
        let body = json!({
            "Type": envelope.r#type,
            "MessageId": envelope.message_id,
            "TopicArn": envelope.topic_arn,
            "Subject": envelope.subject,
            "Message": envelope.message,
            "Timestamp": envelope.timestamp,
            "SignatureVersion": envelope.signature_version,
            "Signature": envelope.signature,
            "SigningCertURL": envelope.signing_cert_url,
            "UnsubscribeURL": envelope.unsubscribe_url,
        });
        Ok(serde_json::to_vec(&body)?)
    }
}

/// Reads the PKCS#8 PEM key at `path`, or generates an RSA-2048 key and
/// writes it there (mode 0600, never overwriting a file).
fn load_or_create_key(path: &Path) -> anyhow::Result<RsaPrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            return RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|error| {
                anyhow!(
                    "cannot read the sns signing key {}: {error} (delete it, and the \
                     certificate beside it, to make new ones)",
                    path.display()
                )
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", path.display()));
        }
    }
    println!(
        "generating an rsa-{RSA_BITS} sns signing key at {} (once)",
        path.display()
    );
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
        .map_err(|error| anyhow!("failed to generate an rsa key: {error}"))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| anyhow!("failed to encode the rsa key: {error}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(key)
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

/// Writes `bytes` to `path` through a temporary file and a rename, so a hub
/// reading the directory never sees half a file.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .context("certificate path has no file name")?;
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)
        .with_context(|| format!("failed to create {}", temporary.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::plan::{Feed, Play};
    use super::super::{SNS_TOPIC_ARN, Track, payloads};
    use super::*;
    use crate::domain::Status;
    use crate::store::format_ms;
    use crate::webhooks::ses::{SnsError, SnsVerifier, parse_ses_message, sns_verify};

    const START_MS: i64 = 1_700_000_000_000;

    fn email_track() -> Track {
        Track {
            feed: Feed::Email,
            campaign: "c1".to_owned(),
            ids: vec![payloads::provider_message_id(Feed::Email, "t", "c1", 0)],
            sent_ms: vec![START_MS],
        }
    }

    fn email_play(status: &'static str, timestamp_ms: i64) -> Play {
        Play {
            feed: Feed::Email,
            message: 0,
            status,
            timestamp_ms,
            redelivery: false,
        }
    }

    /// The key and certificate are made once and reused; the notifications
    /// they sign verify with the hub's own verifier reading the cert dir,
    /// and any change to a signed field makes them fail.
    #[tokio::test]
    async fn signed_notifications_verify_with_the_hubs_verifier() {
        sns_verify::validate_cert_url(SNS_CERT_URL).unwrap();
        assert!(SNS_CERT_URL.ends_with(&format!("/{SNS_CERT_NAME}")));

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sns-certs");
        let (signer, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Created);
        let key_path = dir.join(SNS_KEY_NAME);
        let cert_path = dir.join(SNS_CERT_NAME);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let cert = std::fs::read(&cert_path).unwrap();
        let names: HashSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            HashSet::from([SNS_CERT_NAME.to_owned(), SNS_KEY_NAME.to_owned()])
        );

        let track = email_track();
        let message = serde_json::to_string(
            &payloads::ses_event(&email_play("Open", START_MS + 5), &track).unwrap(),
        )
        .unwrap();
        let body = signer
            .notification(SNS_TOPIC_ARN, "m-1", message, format_ms(START_MS + 155))
            .unwrap();
        let envelope = SnsEnvelope::parse(&body).unwrap();
        assert_eq!(envelope.signature_version, "2");
        assert_eq!(envelope.timestamp, "2023-11-14T22:13:20.155Z");
        assert_eq!(envelope.subject.as_deref(), Some(SES_SUBJECT));
        let verifier = SnsVerifier::new(Some(dir.clone()));
        verifier.verify(&envelope).await.unwrap();
        let update = parse_ses_message(&envelope.message, &envelope.message_id).unwrap();
        assert_eq!(update.status, Some(Status::Read));
        assert_eq!(update.idempotency_key, "sns:m-1");

        let tampered: [fn(&mut SnsEnvelope); 4] = [
            |e| e.message.push(' '),
            |e| e.message_id.push('x'),
            |e| e.timestamp = "2023-11-14T22:13:21.155Z".to_owned(),
            |e| e.subject = None,
        ];
        for tamper in tampered {
            let mut changed = envelope.clone();
            tamper(&mut changed);
            assert!(matches!(
                verifier.verify(&changed).await,
                Err(SnsError::SignatureMismatch)
            ));
        }

        // A second run reuses both files.
        let (again, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Reused);
        assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
        let body = again
            .notification(SNS_TOPIC_ARN, "m-2", "{}".to_owned(), format_ms(START_MS))
            .unwrap();
        verifier
            .verify(&SnsEnvelope::parse(&body).unwrap())
            .await
            .unwrap();

        // A certificate that does not match the key is replaced.
        std::fs::write(&cert_path, "not a certificate").unwrap();
        let (replaced, origin) = SnsSigner::load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Replaced);
        let body = replaced
            .notification(SNS_TOPIC_ARN, "m-3", "{}".to_owned(), format_ms(START_MS))
            .unwrap();
        SnsVerifier::new(Some(dir.clone()))
            .verify(&SnsEnvelope::parse(&body).unwrap())
            .await
            .unwrap();

        // An unreadable key is an error, never silently replaced.
        std::fs::write(&key_path, "garbage").unwrap();
        let error = SnsSigner::load_or_create(&dir).err().unwrap().to_string();
        assert!(error.contains("cannot read the sns signing key"), "{error}");
    }
}
