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
use prometheus::IntCounter;
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
    /// Counts failed certificate loads (`statushub_sns_certificate_failures_total`).
    failures: Option<IntCounter>,
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
            failures: None,
        }
    }

    /// Counts each failed certificate load (download, cert dir, parse) on
    /// `counter`.
    pub fn with_failure_counter(mut self, counter: IntCounter) -> Self {
        self.failures = Some(counter);
        self
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
        let loaded = match self.read_from_dir(cert_url).await {
            Ok(Some(pem)) => rsa_key_from_pem(&pem),
            Ok(None) => match self.download(cert_url).await {
                Ok(pem) => rsa_key_from_pem(&pem),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        if let Err(error) = &loaded {
            tracing::warn!(url = %cert_url, error = %error, "sns certificate could not be loaded");
            if let Some(failures) = &self.failures {
                failures.inc();
            }
        }
        loaded
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
mod tests;
