//! Simulate's SNS signing key and certificate, kept in the hub's
//! `SNS_CERT_DIR`: made once, reused by later runs, the certificate replaced
//! when it does not match the key.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};

use super::sns_signer::SnsSigner;

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
pub const SNS_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-statushub-simulate.pem";

/// What [`SnsSigner::load_or_create`] found in the cert dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertOrigin {
    /// The certificate matched the key and was kept.
    Reused,
    /// There was no certificate; one was made.
    Created,
    /// The certificate did not match the key (or was unreadable) and was
    /// replaced; a hub that already loaded it must be restarted.
    Replaced,
}

/// Loads simulate's signer from `dir` (created if needed), making what is
/// missing: an RSA-2048 key ([`SNS_KEY_NAME`]), written once with mode
/// 0600, and a self-signed certificate for it ([`SNS_CERT_NAME`]),
/// rewritten when it does not match the key. The signer names
/// [`SNS_CERT_URL`].
pub(super) fn load_or_create(dir: &Path) -> anyhow::Result<(SnsSigner, CertOrigin)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create the sns cert dir {}", dir.display()))?;
    let signer = load_or_create_key(&dir.join(SNS_KEY_NAME))?;
    let cert_path = dir.join(SNS_CERT_NAME);
    let origin = match std::fs::read(&cert_path) {
        Ok(pem) if signer.matches_certificate(&pem) => return Ok((signer, CertOrigin::Reused)),
        Ok(_) => CertOrigin::Replaced,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => CertOrigin::Created,
        Err(error) => {
            return Err(error).with_context(|| format!("failed to read {}", cert_path.display()));
        }
    };
    write_replacing(&cert_path, signer.certificate_pem()?.as_bytes())?;
    Ok((signer, origin))
}

/// Reads the PKCS#8 PEM key at `path`, or generates an RSA-2048 key and
/// writes it there (mode 0600, never overwriting a file).
fn load_or_create_key(path: &Path) -> anyhow::Result<SnsSigner> {
    match std::fs::read_to_string(path) {
        Ok(pem) => {
            return SnsSigner::from_pkcs8_pem(&pem, SNS_CERT_URL).map_err(|error| {
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
        "generating an rsa-2048 sns signing key at {} (once)",
        path.display()
    );
    let signer = SnsSigner::generate(SNS_CERT_URL)?;
    let pem = signer.private_key_pem()?;
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
    Ok(signer)
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

    use serde_json::json;

    use super::*;
    use crate::simulate::sns_signer::SignatureVersion;
    use crate::webhooks::ses::{SnsEnvelope, SnsError, SnsVerifier, sns_verify};

    /// Signs a notification with `signer` and verifies it with `verifier`.
    async fn verify(signer: SnsSigner, verifier: &SnsVerifier) -> Result<(), SnsError> {
        let mut message = json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:statushub-simulate",
            "Message": "{}",
            "Timestamp": "2023-11-14T22:13:20.000Z",
        });
        signer.sign(&mut message, SignatureVersion::V2).unwrap();
        let envelope = SnsEnvelope::parse(message.to_string().as_bytes()).unwrap();
        verifier.verify(&envelope).await
    }

    /// Simulate's key and certificate are made once and reused; what they
    /// sign verifies with the hub's own verifier reading the cert dir. A
    /// certificate that does not match the key is replaced; an unreadable
    /// key is an error.
    #[tokio::test]
    async fn simulates_key_and_certificate_are_made_once_reused_and_replaced() {
        sns_verify::validate_cert_url(SNS_CERT_URL).unwrap();
        assert!(SNS_CERT_URL.ends_with(&format!("/{SNS_CERT_NAME}")));

        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sns-certs");
        let (signer, origin) = load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Created);
        assert_eq!(signer.cert_url(), SNS_CERT_URL);
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
        let verifier = SnsVerifier::new(Some(dir.clone()));
        verify(signer, &verifier).await.unwrap();

        // A second run reuses both files.
        let (again, origin) = load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Reused);
        assert_eq!(std::fs::read(&cert_path).unwrap(), cert);
        verify(again, &verifier).await.unwrap();

        // A certificate that does not match the key is replaced.
        std::fs::write(&cert_path, "not a certificate").unwrap();
        let (replaced, origin) = load_or_create(&dir).unwrap();
        assert_eq!(origin, CertOrigin::Replaced);
        verify(replaced, &SnsVerifier::new(Some(dir.clone())))
            .await
            .unwrap();

        // An unreadable key is an error, never silently replaced.
        std::fs::write(&key_path, "garbage").unwrap();
        let error = load_or_create(&dir).err().unwrap().to_string();
        assert!(error.contains("cannot read the sns signing key"), "{error}");
    }
}
