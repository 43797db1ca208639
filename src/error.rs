//! The single HTTP error type: maps every failure to the status the spec
//! requires, with a small JSON body and no internals.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::hub::HubError;
use crate::store::StoreError;

/// Seconds a provider is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Longest text derived from untrusted input that an answer, a log line or
/// a dead letter's reason carries: parser errors quote what they choke on,
/// and a 1 MiB body can hold a 1 MiB string.
pub const MAX_ERROR_TEXT: usize = 512;

/// Returns `text` cut to [`MAX_ERROR_TEXT`] bytes (on a character
/// boundary), marked with `…` when cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ERROR_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// The body of every error answer (4xx and 5xx): one short, human-readable
/// line that never holds internals.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "no such campaign"}))]
pub struct ErrorBody {
    /// What went wrong, at most [`MAX_ERROR_TEXT`] bytes (and a `…`).
    pub error: String,
}

impl ErrorBody {
    /// Returns the body for `text`, clipped.
    pub fn new(text: &str) -> Self {
        ErrorBody {
            error: clip(text).into_owned(),
        }
    }
}

/// Errors an endpoint can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// The request conflicts with the resource's state (a dead letter that
    /// may not be replayed under the current settings).
    #[error("{0}")]
    Conflict(&'static str),
    /// A cap on open streams is reached; the client may retry later.
    #[error("{0}")]
    TooManyStreams(&'static str),
    /// The store is down or the write queue is full; nothing was stored.
    #[error("temporarily unavailable, retry later")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::Overloaded | HubError::Unavailable => ApiError::Unavailable,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, source = ?std::error::Error::source(&error), "store read failed");
        ApiError::Unavailable
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(error) = self {
            tracing::error!(error = ?error, "internal error");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unavailable | ApiError::TooManyStreams(_)) {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)));
        }
        response.json(ErrorBody::new(&self.to_string()))
    }
}

/// Gives every error answer the [`ErrorBody`] shape, as the OpenAPI document
/// says: the router's 404 and 405, and the extractors' refusals (a query or
/// path that does not parse, a body over its limit), which actix-web answers
/// in plain text or with no body at all, get `{"error": …}` with the same
/// status and headers (and `Allow` on a 405). JSON answers and successes
/// pass untouched.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    let response = next.call(req).await?;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return Ok(response.map_into_left_body());
    }
    let text = match response.response().error() {
        Some(error) => error.to_string(),
        None => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    // A resource's own 405 (`web::resource` with other methods) names none.
    let allow = (status == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::ALLOW))
    .then(|| crate::openapi::allowed_methods(response.request().path()).join(", "))
    .filter(|allow| !allow.is_empty());
    let (req, original) = response.into_parts();
    let mut replaced = HttpResponse::build(status).json(ErrorBody::new(&text));
    // Keeps a forced close: a body left unread ends its connection.
    replaced
        .head_mut()
        .set_connection_type(original.head().connection_type());
    for (name, value) in original.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().append(name.clone(), value.clone());
        }
    }
    if let Some(allow) = allow.and_then(|allow| HeaderValue::from_str(&allow).ok()) {
        replaced.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(ServiceResponse::new(req, replaced).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_bounds_text_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_ERROR_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_ERROR_TEXT + "…".len());
        assert!(clipped.ends_with('…'));
    }
}
