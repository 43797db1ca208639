//! What one client may hold of the server: a whole-request deadline, no
//! compressed request bodies, a cap on concurrent connections below the
//! descriptor limit.
//!
//! - **Deadline.** actix-web cuts a request *head* that does not arrive in
//!   time (`client_request_timeout`), but once the head is in, a body may
//!   trickle forever. [`guard`] wraps every request body in a stream that
//!   fails once the request is older than the deadline; the request is then
//!   answered 408 and its connection closed.
//! - **Encodings.** A compressed body is inflated before any size limit can
//!   see it (0.97 MB of gzip holds 1 GB of zeros). No provider compresses
//!   webhooks, so [`guard`] answers 415 to any `Content-Encoding` but
//!   `identity` before a byte of the body is read, on every route, and the
//!   server is built without actix-web's decompression features.
//! - **Connections.** [`connection_cap`] keeps the number of open
//!   connections below the descriptor limit, which [`raise_nofile_limit`]
//!   first raises to the hard limit, so a flood of idle sockets makes new
//!   clients wait in the listen backlog instead of failing every `accept`
//!   with "Too many open files".

use std::cell::Cell;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_ENCODING;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage as _, HttpResponse, web};
use futures_util::Stream;

/// Descriptors kept free of client connections: the database files, the WAL,
/// certificate downloads, logs.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The request deadline, as app data for [`guard`].
#[derive(Clone, Copy, Debug)]
pub struct RequestDeadline(pub Duration);

/// Refuses compressed bodies (415) and bounds the time a request may take to
/// arrive, body included (408, connection closed).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    if let Some(encoding) = req.headers().get(CONTENT_ENCODING) {
        let identity = encoding
            .to_str()
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("identity"));
        if !identity {
            let response = HttpResponse::UnsupportedMediaType()
                // The body was not read: the connection cannot be reused.
                .force_close()
                .json(serde_json::json!({
                    "error": "compressed request bodies are not accepted: send Content-Encoding identity"
                }));
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    let Some(deadline) = req
        .app_data::<web::Data<RequestDeadline>>()
        .map(|deadline| deadline.0)
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let expired = Rc::new(Cell::new(false));
    let payload = req.take_payload();
    let bounded: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(DeadlinePayload {
            inner: payload,
            sleep: Box::pin(tokio::time::sleep(deadline)),
            expired: Rc::clone(&expired),
        });
    req.set_payload(Payload::from(bounded));
    let result = next.call(req).await;
    if !expired.get() {
        return result.map(ServiceResponse::map_into_left_body);
    }
    tracing::debug!(
        deadline_secs = deadline.as_secs_f64(),
        "request body not received in time"
    );
    let response = HttpResponse::RequestTimeout()
        .force_close()
        .json(serde_json::json!({
            "error": "the request did not arrive within the deadline"
        }));
    match result {
        Ok(served) => Ok(served.into_response(response).map_into_right_body()),
        Err(error) => Err(error),
    }
}

/// A request body that fails with a timeout once its deadline passes.
struct DeadlinePayload {
    /// The body as the connection delivers it.
    inner: Payload,
    /// Fires when the request's deadline passes.
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline cut the body, so [`guard`] answers 408.
    expired: Rc<Cell<bool>>,
}

impl Stream for DeadlinePayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired.set(true);
            let timeout =
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request body deadline passed");
            return Poll::Ready(Some(Err(PayloadError::Io(timeout))));
        }
        Poll::Pending
    }
}

/// Raises the soft limit on open descriptors to the hard limit, as servers
/// commonly do, logs both, and returns the limit now in force (`None` where
/// it cannot be read).
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rlimit::Resource;
        let (soft, hard) = match rlimit::getrlimit(Resource::NOFILE) {
            Ok(limits) => limits,
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-file limit");
                return None;
            }
        };
        let raised = if soft < hard {
            match rlimit::setrlimit(Resource::NOFILE, hard, hard) {
                Ok(()) => hard,
                Err(error) => {
                    tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
                    soft
                }
            }
        } else {
            soft
        };
        tracing::info!(
            soft_was = soft,
            soft = raised,
            hard,
            "open-file limit (soft raised to hard)"
        );
        Some(raised)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Returns the connections to allow in total: `wanted`, lowered to stay
/// [`RESERVED_DESCRIPTORS`] below `nofile` when that limit is known.
pub fn connection_cap(wanted: usize, nofile: Option<u64>) -> usize {
    let room = nofile.map_or(u64::MAX, |limit| {
        limit.saturating_sub(RESERVED_DESCRIPTORS).max(1)
    });
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    wanted.clamp(1, room.max(1))
}

/// Splits a total connection cap over the workers (actix-web's cap is per
/// worker).
pub fn per_worker(total: usize, workers: usize) -> usize {
    (total / workers.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(10_000, Some(1_024)), 768);
        assert_eq!(connection_cap(500, Some(1_024)), 500);
        assert_eq!(connection_cap(10_000, None), 10_000);
        assert_eq!(connection_cap(10_000, Some(100)), 1);
        assert_eq!(connection_cap(0, Some(1_024)), 1);
    }

    #[test]
    fn the_cap_is_split_over_workers() {
        assert_eq!(per_worker(768, 2), 384);
        assert_eq!(per_worker(1, 4), 1);
        assert_eq!(per_worker(10, 0), 10);
    }
}
