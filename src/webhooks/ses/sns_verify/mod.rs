//! SNS message signature verification (SignatureVersion 1 and 2).
//!
//! Trust model, as in AWS's own SDK message validators: the signing
//! certificate is trusted because it is either pre-provisioned by the operator
//! (`SNS_CERT_DIR`) or fetched over TLS from a pinned SNS host
//! (`https://sns.<region>.amazonaws.com[.cn]/….pem`). Its chain and validity
//! period are deliberately not checked: AWS keeps serving and signing with
//! certificates past their `notAfter`, and the host pin is what authenticates
//! the key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use tokio::sync::OnceCell;
use x509_cert::Certificate;
use x509_cert::der::{DecodePem as _, Encode as _};

use super::sns::{SnsEnvelope, SnsError};

/// Time allowed for one certificate download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest certificate file accepted (AWS's are about 2 KiB).
const MAX_CERT_BYTES: usize = 64 * 1024;
/// Longest `SigningCertURL` accepted (AWS's are about 100 bytes); with
/// [`KEY_CACHE_CAPACITY`] it bounds the memory the key cache's keys take.
const MAX_CERT_URL_LEN: usize = 1024;
/// Most certificates whose keys are kept. AWS signs with one certificate per
/// region at a time and rotates them rarely; the bound only matters against
/// a flood of distinct (valid) URLs, which evict each other, least recently
/// used first.
const KEY_CACHE_CAPACITY: usize = 256;

/// Checks that `url` may serve an SNS signing certificate: https, host
/// `sns.<region>.amazonaws.com` or `sns.<region>.amazonaws.com.cn`, no
/// credentials, default port, no query or fragment, path ending in `.pem`,
/// at most [`MAX_CERT_URL_LEN`] bytes. Returns it parsed, hence normalized:
/// host lowercased, default port dropped, dot segments resolved.
pub fn validate_cert_url(url: &str) -> Result<Url, SnsError> {
    let untrusted = || SnsError::UntrustedCertUrl(SnsError::quote(url));
    if url.len() > MAX_CERT_URL_LEN {
        return Err(untrusted());
    }
    let parsed = parse_sns_url(url).ok_or_else(untrusted)?;
    let pem_path = parsed.path().len() > "/.pem".len() && parsed.path().ends_with(".pem");
    if !pem_path || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(untrusted());
    }
    Ok(parsed)
}

/// Returns the key cache's key for a validated certificate URL: its scheme,
/// host and path as [`Url`] normalized them, so every spelling of one URL
/// (`SNS.…`, `:443`, `/a/../x.pem`) shares one entry.
fn cert_cache_key(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    )
}

/// Checks that `url` may be visited to confirm a subscription: https, an SNS
/// host (as for [`validate_cert_url`]), no credentials, default port; any
/// path and query.
pub fn validate_subscribe_url(url: &str) -> Result<(), SnsError> {
    parse_sns_url(url)
        .map(drop)
        .ok_or_else(|| SnsError::UntrustedSubscribeUrl(SnsError::quote(url)))
}

/// Parses `url` and returns it when it is https on an SNS regional host,
/// without userinfo or an explicit non-default port.
fn parse_sns_url(url: &str) -> Option<Url> {
    let parsed = Url::parse(url).ok()?;
    let plain = parsed.scheme() == "https"
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.port().is_none();
    // `domain()` is `None` for IP-address hosts.
    let sns_host = parsed.domain().is_some_and(is_sns_host);
    (plain && sns_host).then_some(parsed)
}

/// Tells whether `host` is `sns.<region>.amazonaws.com[.cn]` with `<region>`
/// shaped like an AWS region: lowercase words and a number, dash-separated
/// (`us-east-2`, `ap-southeast-1`, `us-gov-west-1`, `cn-north-1`). That shape
/// matters: `sns.s3-us-west-2.amazonaws.com` is an S3 bucket named `sns`,
/// served under the same wildcard certificate, and must not pass.
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(is_region)
}

/// Tells whether `region` is two or more words of lowercase letters then a
/// number, joined by dashes.
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((number, words)) = parts.split_last() else {
        return false;
    };
    words.len() >= 2
        && words
            .iter()
            .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase()))
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// A cell holding one certificate's public key once loaded.
type KeyCell = Arc<OnceCell<RsaPublicKey>>;

/// Public keys by normalized certificate URL ([`cert_cache_key`]), at most
/// [`KEY_CACHE_CAPACITY`] of them, the least recently used evicted first.
#[derive(Debug, Default)]
struct KeyCache {
    entries: HashMap<String, CachedKey>,
    /// Counts uses; an entry's `last_used` is the count at its latest use.
    clock: u64,
}

#[derive(Debug)]
struct CachedKey {
    cell: KeyCell,
    last_used: u64,
}

impl KeyCache {
    /// Returns the cell of `key`, marked as just used, adding an empty one
    /// (after evicting the least recently used entry when full) on a miss.
    fn cell(&mut self, key: &str) -> KeyCell {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            entry.last_used = self.clock;
            return Arc::clone(&entry.cell);
        }
        if self.entries.len() >= KEY_CACHE_CAPACITY {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(oldest, _)| oldest.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let cell = KeyCell::default();
        self.entries.insert(
            key.to_owned(),
            CachedKey {
                cell: Arc::clone(&cell),
                last_used: self.clock,
            },
        );
        cell
    }

    /// Drops `key` after its load failed, if it still holds that same empty
    /// `cell` (not one added since, nor one another caller filled).
    fn forget_failed(&mut self, key: &str, cell: &KeyCell) {
        let stale = self
            .entries
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.cell, cell) && !entry.cell.initialized());
        if stale {
            self.entries.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

/// Verifies SNS message signatures, loading each signing certificate once.
#[derive(Debug)]
pub struct SnsVerifier {
    cert_dir: Option<PathBuf>,
    /// `None` only if the TLS client could not be built; downloads then fail.
    client: Option<reqwest::Client>,
    /// Test-only base certificates are downloaded from instead of their SNS
    /// host; see [`crate::config::Settings::sns_cert_download_override`].
    download_override: Option<Url>,
    /// Public keys by normalized certificate URL, whether read from the cert
    /// dir or downloaded. A cell is initialised at most once; concurrent
    /// misses wait on the same cell, and a failed load leaves it empty and is
    /// dropped from the cache so the next message retries.
    keys: Mutex<KeyCache>,
}

impl SnsVerifier {
    /// Returns a verifier that looks for certificates in `cert_dir` (files
    /// named as the last path segment of `SigningCertURL`) before
    /// downloading them from the SNS host.
    pub fn new(cert_dir: Option<PathBuf>) -> Self {
        SnsVerifier {
            cert_dir,
            client: download_client(true),
            download_override: None,
            keys: Mutex::new(KeyCache::default()),
        }
    }

    /// Test-only: with `base` set, downloads certificates from `base`
    /// (scheme, host and port, plain http allowed) instead of the
    /// `SigningCertURL`'s SNS host, keeping the URL's path. The
    /// `SigningCertURL` is still validated first, so only a genuine-looking
    /// SNS URL is fetched, and keys are cached under it. See
    /// [`crate::config::Settings::sns_cert_download_override`].
    pub fn with_download_override(mut self, base: Option<Url>) -> Self {
        if let Some(base) = &base {
            tracing::warn!(
                base = %base,
                "sns certificates are downloaded from a test override instead of sns; never run like this in production"
            );
            self.client = download_client(false);
        }
        self.download_override = base;
        self
    }

    /// Verifies the envelope's signature: builds the string to sign (which
    /// refuses a line break in a one-line field), checks the certificate URL
    /// (an untrusted one is refused before any request), the signature
    /// version and encoding, then the RSASSA-PKCS1-v1_5 signature (SHA1 for
    /// version `1`, SHA256 for `2`) over [`SnsEnvelope::string_to_sign`].
    pub async fn verify(&self, envelope: &SnsEnvelope) -> Result<(), SnsError> {
        let signed = envelope.string_to_sign()?;
        if envelope.signing_cert_url.is_empty() {
            return Err(SnsError::MissingField("SigningCertURL"));
        }
        let cert_url = validate_cert_url(&envelope.signing_cert_url)?;
        let sha256 = match envelope.signature_version.as_str() {
            "1" => false,
            "2" => true,
            "" => return Err(SnsError::MissingField("SignatureVersion")),
            other => return Err(SnsError::BadSignatureVersion(SnsError::quote(other))),
        };
        if envelope.signature.is_empty() {
            return Err(SnsError::MissingField("Signature"));
        }
        let signature = STANDARD
            .decode(&envelope.signature)
            .map_err(|_| SnsError::BadSignatureEncoding)?;

        let key = self.public_key(&cert_url).await?;
        let outcome = if sha256 {
            key.verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(&signed),
                &signature,
            )
        } else {
            key.verify(
                Pkcs1v15Sign::new::<Sha1>(),
                &Sha1::digest(&signed),
                &signature,
            )
        };
        outcome.map_err(|_| SnsError::SignatureMismatch)
    }

    /// Returns the public key of the (already validated) certificate URL,
    /// from the cache or loaded once.
    async fn public_key(&self, cert_url: &Url) -> Result<RsaPublicKey, SnsError> {
        let key = cert_cache_key(cert_url);
        let cell = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cell(&key);
        match cell.get_or_try_init(|| self.load_key(cert_url)).await {
            Ok(public_key) => Ok(public_key.clone()),
            Err(error) => {
                self.keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget_failed(&key, &cell);
                Err(error)
            }
        }
    }

    /// Reads the certificate from the cert dir when it holds it, else
    /// downloads it, and extracts its RSA public key.
    async fn load_key(&self, cert_url: &Url) -> Result<RsaPublicKey, SnsError> {
        let pem = match self.read_from_dir(cert_url).await? {
            Some(pem) => pem,
            None => self.download(cert_url).await?,
        };
        rsa_key_from_pem(&pem)
    }

    /// Returns the cert dir's file named as the URL's last path segment, or
    /// `None` when there is no cert dir or no such file.
    async fn read_from_dir(&self, cert_url: &Url) -> Result<Option<Vec<u8>>, SnsError> {
        let Some(dir) = &self.cert_dir else {
            return Ok(None);
        };
        let name = cert_url
            .path_segments()
            .and_then(|mut segments| segments.next_back())
            .filter(|name| {
                !name.starts_with('.')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            });
        let Some(name) = name else {
            return Ok(None);
        };
        let path = dir.join(name);
        match tokio::fs::read(&path).await {
            Ok(pem) => {
                tracing::debug!(path = %path.display(), "sns certificate read from cert dir");
                Ok(Some(pem))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(SnsError::CertificateUnavailable(format!(
                "cannot read {}: {error}",
                path.display()
            ))),
        }
    }

    /// Downloads the certificate (no redirects, bounded size).
    async fn download(&self, cert_url: &Url) -> Result<Vec<u8>, SnsError> {
        let unavailable = SnsError::CertificateUnavailable;
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| unavailable("no http client".to_owned()))?;
        let target = match &self.download_override {
            Some(base) => {
                let mut target = base.clone();
                target.set_path(cert_url.path());
                target.set_query(None);
                target
            }
            None => cert_url.clone(),
        };
        tracing::debug!(url = %target, "downloading sns certificate");
        let mut response = client
            .get(target)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| unavailable(format!("download failed: {error}")))?;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| unavailable(format!("download failed: {error}")))?
        {
            if body.len() + chunk.len() > MAX_CERT_BYTES {
                return Err(unavailable("certificate too large".to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Returns the client certificates are downloaded with (no redirects), or
/// `None` if it cannot be built.
fn download_client(https_only: bool) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https_only)
        .build()
        .inspect_err(|error| {
            tracing::warn!(%error, "no http client: sns certificate downloads disabled");
        })
        .ok()
}

/// Extracts the RSA public key of the first certificate in a PEM file.
fn rsa_key_from_pem(pem: &[u8]) -> Result<RsaPublicKey, SnsError> {
    let unavailable = SnsError::CertificateUnavailable;
    let block =
        first_pem_block(pem).ok_or_else(|| unavailable("no pem certificate found".to_owned()))?;
    let certificate = Certificate::from_pem(block)
        .map_err(|error| unavailable(format!("invalid pem certificate: {error}")))?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|error| unavailable(format!("invalid public key: {error}")))?;
    RsaPublicKey::from_public_key_der(&spki)
        .map_err(|error| unavailable(format!("not an rsa public key: {error}")))
}

/// Returns the first `CERTIFICATE` block of a PEM file with LF line endings:
/// the strict RFC 7468 decoder refuses surrounding text, blank lines and CRLF,
/// which hand-provisioned files may have.
fn first_pem_block(pem: &[u8]) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find(BEGIN)?;
    let end = start + text[start..].find(END)? + END.len();
    Some(format!("{}\n", text[start..end].replace("\r\n", "\n")))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::super::sns::shared_vectors;
    use super::*;
    use crate::simulate::sns_signer::{self, SignatureVersion, SnsSigner, test_signer};

    const AWS_CERT_URL: &str = "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";

    #[test]
    fn cert_urls_on_sns_hosts_are_accepted() {
        for url in [
            "https://sns.us-east-2.amazonaws.com/x.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
            "https://sns.us-gov-west-1.amazonaws.com/a/b/c.pem",
            "https://SNS.US-EAST-1.amazonaws.com:443/x.pem",
            AWS_CERT_URL,
        ] {
            assert!(validate_cert_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn cert_urls_elsewhere_are_refused() {
        for url in [
            "http://sns.us-east-2.amazonaws.com/x.pem",
            "https://sns.us-east-2.amazonaws.com.evil.com/x.pem",
            "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.us.east.2.amazonaws.com/x.pem",
            "https://sns.us-east-2.amazonaws.com./x.pem",
            "https://evilsns.us-east-2.amazonaws.com/x.pem",
            "https://sqs.us-east-2.amazonaws.com/x.pem",
            "https://sns.us-east-2.amazonaws.com/x.pem.txt",
            "https://sns.us-east-2.amazonaws.com/x",
            "https://sns.us-east-2.amazonaws.com/.pem",
            "https://sns.us-east-2.amazonaws.com/x.pem?a=b",
            "https://sns.us-east-2.amazonaws.com/x.pem#frag",
            "https://user@sns.us-east-2.amazonaws.com/x.pem",
            "https://user:pw@sns.us-east-2.amazonaws.com/x.pem",
            "https://evil.com@sns.us-east-2.amazonaws.com/x.pem",
            "https://sns.us-east-2.amazonaws.com:8443/x.pem",
            "https://52.94.1.1/x.pem",
            // S3 buckets named `sns` under the same wildcard certificate.
            "https://sns.s3-us-west-2.amazonaws.com/x.pem",
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.us-east.amazonaws.com/x.pem",
            "https://sns.east-2.amazonaws.com/x.pem",
            "file:///sns.us-east-2.amazonaws.com/x.pem",
            "sns.us-east-2.amazonaws.com/x.pem",
            "",
        ] {
            assert!(
                matches!(validate_cert_url(url), Err(SnsError::UntrustedCertUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn overlong_cert_urls_are_refused() {
        let path = "a/".repeat(MAX_CERT_URL_LEN / 2);
        let long = format!("https://sns.us-east-2.amazonaws.com/{path}x.pem");
        assert!(matches!(
            validate_cert_url(&long),
            Err(SnsError::UntrustedCertUrl(_))
        ));
        let fits = format!(
            "https://sns.us-east-2.amazonaws.com/{}x.pem",
            &path[..MAX_CERT_URL_LEN - 48]
        );
        assert!(fits.len() <= MAX_CERT_URL_LEN);
        validate_cert_url(&fits).unwrap();
    }

    #[test]
    fn subscribe_urls_follow_the_host_rule() {
        assert!(
            validate_subscribe_url(
                "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:1:t&Token=abc"
            )
            .is_ok()
        );
        assert!(
            validate_subscribe_url(
                "https://sns.cn-northwest-1.amazonaws.com.cn/?Action=ConfirmSubscription"
            )
            .is_ok()
        );
        for url in [
            "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
            "https://sns.us-west-2.amazonaws.com.evil.com/?Action=ConfirmSubscription",
            "https://u:p@sns.us-west-2.amazonaws.com/",
            "https://sns.us-west-2.amazonaws.com:444/",
        ] {
            assert!(
                matches!(
                    validate_subscribe_url(url),
                    Err(SnsError::UntrustedSubscribeUrl(_))
                ),
                "{url}"
            );
        }
    }

    fn aws_vector(name: &str) -> (SnsEnvelope, PathBuf) {
        let dir = shared_vectors("sns");
        let envelope = SnsEnvelope::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        assert_eq!(envelope.signing_cert_url, AWS_CERT_URL);
        (envelope, dir)
    }

    fn flip_last_char(text: &mut String) {
        let last = text.pop().unwrap();
        text.push(if last == 'x' { 'y' } else { 'x' });
    }

    /// Genuine AWS-signed notifications (aws/aws-php-sns-message-validator
    /// fixtures) verify offline through the cert dir, and any change to a
    /// signed byte or to the signature version makes them fail.
    #[tokio::test]
    async fn aws_signed_vectors_verify_and_tampering_fails() {
        for name in [
            "php2022-notification-v1-subject.json",
            "php2022-notification-v2-subject.json",
        ] {
            let (genuine, dir) = aws_vector(name);
            let verifier = SnsVerifier::new(Some(dir));
            verifier.verify(&genuine).await.unwrap();
            verifier.verify(&genuine).await.unwrap();

            let tampered: [fn(&mut SnsEnvelope); 6] = [
                |e| flip_last_char(&mut e.message),
                |e| flip_last_char(e.subject.as_mut().unwrap()),
                |e| e.subject = None,
                |e| flip_last_char(&mut e.timestamp),
                |e| flip_last_char(&mut e.message_id),
                |e| flip_last_char(&mut e.topic_arn),
            ];
            for tamper in tampered {
                let mut envelope = genuine.clone();
                tamper(&mut envelope);
                assert!(matches!(
                    verifier.verify(&envelope).await,
                    Err(SnsError::SignatureMismatch)
                ));
            }
            let mut other_version = genuine.clone();
            other_version.signature_version = if genuine.signature_version == "2" {
                "1"
            } else {
                "2"
            }
            .to_owned();
            assert!(matches!(
                verifier.verify(&other_version).await,
                Err(SnsError::SignatureMismatch)
            ));
        }
    }

    /// AWS's genuine notification, replayed with its subject moved into
    /// `MessageId` (the same signed bytes), is refused for the line break.
    #[tokio::test]
    async fn an_aws_vector_with_its_subject_shifted_into_the_message_id_is_refused() {
        for name in [
            "php2022-notification-v1-subject.json",
            "php2022-notification-v2-subject.json",
        ] {
            let (genuine, dir) = aws_vector(name);
            let verifier = SnsVerifier::new(Some(dir));
            let subject = genuine.subject.clone().unwrap();
            let shifted = SnsEnvelope {
                message_id: format!("{}\nSubject\n{subject}", genuine.message_id),
                subject: None,
                ..genuine.clone()
            };
            assert!(matches!(
                verifier.verify(&shifted).await,
                Err(SnsError::LineBreak("MessageId"))
            ));
            verifier.verify(&genuine).await.unwrap();
        }
    }

    /// AWS's genuine notifications with their keys spelled as a Lambda relay
    /// writes them (`SigningCertUrl`, `UnsubscribeUrl`) still verify.
    #[tokio::test]
    async fn aws_vectors_in_the_lambda_spelling_verify() {
        let dir = shared_vectors("sns");
        let verifier = SnsVerifier::new(Some(dir.clone()));
        for name in [
            "php2022-notification-v1-subject.json",
            "php2022-notification-v2-subject.json",
        ] {
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
            let object = json.as_object_mut().unwrap();
            for (aws, lambda) in [
                ("SigningCertURL", "SigningCertUrl"),
                ("UnsubscribeURL", "UnsubscribeUrl"),
            ] {
                let value = object.remove(aws).unwrap();
                object.insert(lambda.to_owned(), value);
            }
            let envelope = SnsEnvelope::parse(json.to_string().as_bytes()).unwrap();
            assert_eq!(envelope.signing_cert_url, AWS_CERT_URL);
            verifier.verify(&envelope).await.unwrap();
        }
    }

    #[tokio::test]
    async fn malformed_signature_fields_are_refused_before_any_fetch() {
        let (genuine, dir) = aws_vector("php2022-notification-v2-subject.json");
        let verifier = SnsVerifier::new(Some(dir));
        type Tamper = fn(&mut SnsEnvelope);
        type Expected = fn(&SnsError) -> bool;
        let cases: [(Tamper, Expected); 6] = [
            (
                |e| e.signature_version = "3".into(),
                |r| matches!(r, SnsError::BadSignatureVersion(_)),
            ),
            (
                |e| e.signature_version.clear(),
                |r| matches!(r, SnsError::MissingField("SignatureVersion")),
            ),
            (
                |e| e.signature = "not base64!".into(),
                |r| matches!(r, SnsError::BadSignatureEncoding),
            ),
            (
                |e| e.signature.clear(),
                |r| matches!(r, SnsError::MissingField("Signature")),
            ),
            (
                |e| {
                    e.signing_cert_url = "https://evil.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem".into()
                },
                |r| matches!(r, SnsError::UntrustedCertUrl(_)),
            ),
            (
                |e| e.r#type = "Other".into(),
                |r| matches!(r, SnsError::UnknownType(_)),
            ),
        ];
        for (tamper, expected) in cases {
            let mut envelope = genuine.clone();
            tamper(&mut envelope);
            let error = verifier.verify(&envelope).await.unwrap_err();
            assert!(expected(&error), "{error}");
        }
        let short = SnsEnvelope {
            signature: STANDARD.encode([0u8; 8]),
            ..genuine
        };
        assert!(matches!(
            verifier.verify(&short).await,
            Err(SnsError::SignatureMismatch)
        ));
    }

    /// SNS messages of every type, as JSON, on the test certificate's host.
    fn messages_of_every_type() -> Vec<serde_json::Value> {
        let subscribe_url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription";
        [
            ("Notification", serde_json::json!({"Subject": "s"})),
            ("Notification", serde_json::json!({})),
            (
                "SubscriptionConfirmation",
                serde_json::json!({"SubscribeURL": subscribe_url, "Token": "tok"}),
            ),
            (
                "UnsubscribeConfirmation",
                serde_json::json!({"SubscribeURL": subscribe_url, "Token": "tok"}),
            ),
        ]
        .into_iter()
        .map(|(kind, extra)| {
            let mut json = serde_json::json!({
                "Type": kind,
                "MessageId": "m-1",
                "TopicArn": "arn:aws:sns:eu-west-1:1:topic",
                "Message": "{\"eventType\":\"Send\"}\nline two é",
                "Timestamp": "2024-01-01T00:00:00.000Z",
            });
            json.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json
        })
        .collect()
    }

    /// Messages of every type, signed with both versions by the crate's SNS
    /// signer (which builds AWS's canonical string with its own code),
    /// verify; a changed message then fails.
    #[tokio::test]
    async fn signed_messages_of_every_type_and_version_verify() {
        let signer = test_signer();
        let dir = tempfile::tempdir().unwrap();
        let name = signer.cert_url().rsplit('/').next().unwrap();
        std::fs::write(dir.path().join(name), signer.certificate_pem().unwrap()).unwrap();
        let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
        for message in messages_of_every_type() {
            for version in [SignatureVersion::V1, SignatureVersion::V2] {
                let mut signed = message.clone();
                signer.sign(&mut signed, version).unwrap();
                let mut envelope = SnsEnvelope::parse(signed.to_string().as_bytes()).unwrap();
                verifier.verify(&envelope).await.unwrap();

                flip_last_char(&mut envelope.message);
                assert!(matches!(
                    verifier.verify(&envelope).await,
                    Err(SnsError::SignatureMismatch)
                ));
            }
        }
    }

    /// Runs the `openssl` CLI, failing the test (never skipping it) when it
    /// is missing or fails.
    fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("this cross-check needs the openssl cli: install openssl");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
        output.stdout
    }

    /// The cross-check against an RSA implementation independent of ours:
    /// the `openssl` CLI makes a key and certificate and signs each canonical
    /// string (SHA1 and SHA256); its signatures are byte for byte the crate
    /// signer's with the same key (PKCS#1 v1.5 is deterministic), and they
    /// verify. An EC certificate, which openssl makes too, is refused.
    #[tokio::test]
    async fn openssl_signatures_equal_ours_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let cert_name = "SimpleNotificationService-openssl.pem";
        let rsa = [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ];
        let subject = [
            "-subj",
            "/CN=sns.amazonaws.com",
            "-keyout",
            "key.pem",
            "-out",
        ];
        openssl(&[&rsa[..], &subject[..], &[cert_name]].concat(), dir.path());
        let ec = [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ];
        let ec_files = [
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ec",
            "-keyout",
            "ec-key.pem",
        ];
        openssl(
            &[&ec[..], &ec_files[..], &["-out", "ec.pem"]].concat(),
            dir.path(),
        );
        assert!(matches!(
            rsa_key_from_pem(&std::fs::read(dir.path().join("ec.pem")).unwrap()),
            Err(SnsError::CertificateUnavailable(_))
        ));

        let cert_url = format!("https://sns.eu-west-1.amazonaws.com/{cert_name}");
        let key = std::fs::read_to_string(dir.path().join("key.pem")).unwrap();
        let ours = SnsSigner::from_pkcs8_pem(&key, cert_url.clone()).unwrap();
        let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
        for mut message in messages_of_every_type() {
            for (version, digest) in [
                (SignatureVersion::V1, "-sha1"),
                (SignatureVersion::V2, "-sha256"),
            ] {
                let canonical = sns_signer::string_to_sign(&message).unwrap();
                std::fs::write(dir.path().join("to-sign.txt"), &canonical).unwrap();
                let theirs = STANDARD.encode(openssl(
                    &["dgst", digest, "-sign", "key.pem", "to-sign.txt"],
                    dir.path(),
                ));
                assert_eq!(ours.signature(version, &canonical).unwrap(), theirs);
                message["SignatureVersion"] = version.as_str().into();
                message["SigningCertURL"] = cert_url.as_str().into();
                message["Signature"] = theirs.into();
                let envelope = SnsEnvelope::parse(message.to_string().as_bytes()).unwrap();
                verifier.verify(&envelope).await.unwrap();
            }
        }
    }

    /// A bad file in the cert dir is an error (never a silent download), and
    /// the failure is not cached: fixing the file makes the next call succeed.
    #[tokio::test]
    async fn cert_dir_failures_are_not_cached() {
        let (genuine, vectors) = aws_vector("php2022-notification-v2-subject.json");
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir
            .path()
            .join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem");
        std::fs::write(
            &cert_file,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let verifier = SnsVerifier::new(Some(dir.path().to_owned()));
        assert!(matches!(
            verifier.verify(&genuine).await,
            Err(SnsError::CertificateUnavailable(_))
        ));
        assert!(verifier.keys.lock().unwrap().is_empty());
        std::fs::copy(
            vectors.join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"),
            &cert_file,
        )
        .unwrap();
        verifier.verify(&genuine).await.unwrap();
        assert_eq!(verifier.keys.lock().unwrap().len(), 1);
    }

    /// Every spelling of one certificate URL (host case, default port, dot
    /// segments, characters the URL parser drops) verifies through one cache
    /// entry, keyed by the normalized URL.
    #[tokio::test]
    async fn spellings_of_one_cert_url_share_one_cache_entry() {
        let (genuine, dir) = aws_vector("php2022-notification-v2-subject.json");
        let verifier = SnsVerifier::new(Some(dir));
        let name = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
        let spellings = [
            AWS_CERT_URL.to_owned(),
            format!("https://SNS.US-EAST-2.AmazonAWS.com/{name}"),
            format!("HTTPS://sns.us-east-2.amazonaws.com/{name}"),
            format!("https://sns.us-east-2.amazonaws.com:443/{name}"),
            format!("https://sns.us-east-2.amazonaws.com/a/../{name}"),
            format!("https://sns.us-east-2.amazonaws.com/./{name}"),
            format!("https://sns.us-east-2.amazonaws.com/a/b/%2e%2E/../{name}"),
            format!("https://sns.us-east-2.amazonaws.com/a/.%2E/{name}"),
            format!(
                "https://sns.us-east-2.amazonaws.com/{}\t.pem",
                &name[..name.len() - 4]
            ),
            format!(" https://sns.us-east-2.amazonaws.com/{name} "),
        ];
        for spelling in spellings {
            let envelope = SnsEnvelope {
                signing_cert_url: spelling.clone(),
                ..genuine.clone()
            };
            verifier.verify(&envelope).await.unwrap();
            let keys = verifier.keys.lock().unwrap();
            assert_eq!(keys.len(), 1, "{spelling:?}");
            assert!(keys.contains(AWS_CERT_URL), "{spelling:?}");
        }
    }

    /// A flood of distinct valid URLs (prefixes before the cert dir's file
    /// name) all load, and the cache stays at its capacity, evicting the
    /// least recently used: a URL in steady use stays cached. Every 16th
    /// goes through the whole verification (an RSA check costs some 5 ms
    /// unoptimised; loading a key is what the cache is about).
    #[tokio::test]
    async fn distinct_cert_urls_stay_within_the_cache_capacity() {
        let (genuine, dir) = aws_vector("php2022-notification-v1-subject.json");
        let verifier = SnsVerifier::new(Some(dir));
        let name = "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
        let flood = |i: usize| format!("https://sns.us-east-2.amazonaws.com/p{i}/{name}");
        let rounds = KEY_CACHE_CAPACITY * 8;
        for i in 0..rounds {
            let url = if i % (KEY_CACHE_CAPACITY / 2) == 0 {
                AWS_CERT_URL.to_owned()
            } else {
                flood(i)
            };
            if i % 16 == 0 || i + 1 == rounds {
                let envelope = SnsEnvelope {
                    signing_cert_url: url,
                    ..genuine.clone()
                };
                verifier.verify(&envelope).await.unwrap();
            } else {
                verifier
                    .public_key(&validate_cert_url(&url).unwrap())
                    .await
                    .unwrap();
            }
            assert!(verifier.keys.lock().unwrap().len() <= KEY_CACHE_CAPACITY);
        }
        let keys = verifier.keys.lock().unwrap();
        assert_eq!(keys.len(), KEY_CACHE_CAPACITY);
        assert!(keys.contains(AWS_CERT_URL));
        assert!(!keys.contains(&flood(1)));
        assert!(keys.contains(&flood(rounds - 1)));
    }

    /// A full cache evicts its least recently used entry, not the oldest.
    #[test]
    fn the_least_recently_used_key_is_evicted_first() {
        let mut cache = KeyCache::default();
        let keys: Vec<String> = (0..=KEY_CACHE_CAPACITY).map(|i| format!("k{i}")).collect();
        let first = cache.cell(&keys[0]);
        for key in &keys[1..KEY_CACHE_CAPACITY] {
            cache.cell(key);
        }
        assert_eq!(cache.len(), KEY_CACHE_CAPACITY);
        assert!(Arc::ptr_eq(&cache.cell(&keys[0]), &first), "a hit");
        cache.cell(&keys[KEY_CACHE_CAPACITY]);
        assert_eq!(cache.len(), KEY_CACHE_CAPACITY);
        assert!(cache.contains(&keys[0]) && cache.contains(&keys[KEY_CACHE_CAPACITY]));
        assert!(!cache.contains(&keys[1]));
    }

    /// Concurrent first uses share one cache entry and all succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_entry() {
        let (genuine, dir) = aws_vector("php2022-notification-v1-subject.json");
        let verifier = Arc::new(SnsVerifier::new(Some(dir)));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (verifier, envelope) = (Arc::clone(&verifier), genuine.clone());
                tokio::spawn(async move { verifier.verify(&envelope).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(verifier.keys.lock().unwrap().len(), 1);
    }

    #[test]
    fn aws_certificate_parses_with_surrounding_whitespace() {
        let dir = shared_vectors("sns");
        let pem = std::fs::read_to_string(
            dir.join("SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"),
        )
        .unwrap();
        rsa_key_from_pem(pem.as_bytes()).unwrap();
        rsa_key_from_pem(format!("{}\r\n\r\n", pem.trim_end()).as_bytes()).unwrap();
        rsa_key_from_pem(
            format!(
                "subject=CN = sns.amazonaws.com\n\n{}",
                pem.replace('\n', "\r\n")
            )
            .as_bytes(),
        )
        .unwrap();
        rsa_key_from_pem(format!("{pem}{pem}").as_bytes()).unwrap();
    }

    #[test]
    fn non_rsa_or_garbage_pem_is_refused() {
        for pem in [
            &b""[..],
            b"garbage",
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        ] {
            assert!(matches!(
                rsa_key_from_pem(pem),
                Err(SnsError::CertificateUnavailable(_))
            ));
        }
    }
}
