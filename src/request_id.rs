//! Request ids: taken from `X-Request-Id` when the caller (a load balancer,
//! a proxy) sent a safe one, generated otherwise, echoed in the response's
//! `X-Request-Id` and carried by the request's log span (see `observe` in
//! [`crate::startup`]).
//!
//! An incoming id is logged and echoed, so only a bounded, plain value is
//! taken: 1 to [`MAX_REQUEST_ID_LEN`] characters of `[A-Za-z0-9._:-]`.
//! Anything else (too long, spaces, quotes, control or non-ASCII bytes) is
//! ignored, never echoed, and the request gets a generated id.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header a request id arrives in and is echoed in.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming request id taken, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Returns the request's own id when it sent an acceptable one, else a
/// generated one (32 lowercase hex digits, 128 random bits).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID_HEADER)
        .filter(|value| is_acceptable(value.as_bytes()))
        .cloned()
        .unwrap_or_else(generate)
}

/// Whether `id` may be taken as a request id: 1 to [`MAX_REQUEST_ID_LEN`]
/// bytes of `[A-Za-z0-9._:-]`.
pub fn is_acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh id: 32 lowercase hex digits from the thread's random generator
/// (no system call per request).
fn generate() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    // Hex digits are always a valid header value.
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        headers
    }

    #[test]
    fn a_safe_incoming_id_is_kept() {
        for id in ["abc", "req-1.2_3:4", &"a".repeat(MAX_REQUEST_ID_LEN)] {
            let got = request_id(&headers_with(id.as_bytes()));
            assert_eq!(got.as_bytes(), id.as_bytes());
        }
    }

    #[test]
    fn an_unsafe_or_long_incoming_id_is_replaced() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for id in [
            &long[..],
            "",
            "has space",
            "quote\"",
            "semi;colon",
            "tab\there",
            "caf\u{e9}",
            "{\"json\":1}",
        ] {
            let got = request_id(&headers_with(id.as_bytes()));
            assert_ne!(got.as_bytes(), id.as_bytes(), "{id:?} was kept");
            assert_eq!(got.len(), 32, "{got:?}");
        }
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let first = request_id(&HeaderMap::new());
        let second = request_id(&HeaderMap::new());
        assert_ne!(first, second);
        for id in [first, second] {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
    }
}
