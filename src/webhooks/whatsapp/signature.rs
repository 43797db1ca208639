//! Meta's `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw
//! body under the app secret.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Why a signature was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
}

/// Verifies `header` (the header's value) against `body`, in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest.trim_ascii()).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Returns the header value Meta would send for `body`: `sha256=<hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips() {
        let header = sign(b"secret", b"{}");
        assert_eq!(verify(b"secret", b"{}", Some(header.as_bytes())), Ok(()));
    }

    #[test]
    fn known_vector_matches_openssl() {
        // printf '{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", br#"{"a":1}"#),
            "sha256=aa9e2e3575f5d7098b6caccd790888c36d5fdb63342a73bada2d6a51747a8494"
        );
    }

    #[test]
    fn bad_signatures_are_refused() {
        let header = sign(b"secret", b"{}");
        assert_eq!(
            verify(b"other", b"{}", Some(header.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", b"{ }", Some(header.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(b"secret", b"{}", None), Err(SignatureError::Missing));
        assert_eq!(
            verify(b"secret", b"{}", Some(b"sha1=00")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"secret", b"{}", Some(b"sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(b"secret", b"{}", Some(b"sha256=00")),
            Err(SignatureError::Mismatch)
        );
    }
}
