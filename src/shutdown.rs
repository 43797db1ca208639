//! Graceful shutdown: what SIGTERM (or SIGINT) sets off, in order.
//!
//! 1. [`Shutdown::begin`]: the hub starts draining. From then on every new
//!    request is answered 503 with `Retry-After` and `Connection: close`
//!    ([`refuse_while_draining`]), and responses to requests already in
//!    flight close their connection; every SSE stream sends `event:
//!    shutdown` with a `retry:` hint and ends, so its client reconnects
//!    (elsewhere, behind a load balancer) at once instead of holding the
//!    shutdown up.
//! 2. The HTTP server stops (actix's graceful stop): the listener closes
//!    (new connections are refused), and requests in flight finish, each
//!    webhook up to its commit and its 200, for at most
//!    [`SHUTDOWN_TIMEOUT`]; connections still open then are dropped, their
//!    webhooks unanswered (the provider retries them).
//! 3. The DB actor settles (no write queued or committing, at most
//!    [`SETTLE_TIMEOUT`]), then the store closes: a 200 is only ever sent
//!    after its commit, and no commit starts after the store closed.
//!
//! So the process exits within `SHUTDOWN_TIMEOUT + SETTLE_TIMEOUT` (15 s)
//! of the signal, with status 0; usually within a few seconds (idle
//! keep-alive connections close at their 5 s keep-alive timeout).

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use tokio::sync::watch;

use crate::error::RETRY_AFTER_SECS;

/// Longest the HTTP server waits for requests in flight once stopped.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the last commits may take once the server has stopped.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `retry:` an SSE stream ends with at shutdown: clients come back
/// soon, to whichever instance answers.
pub const SHUTDOWN_RETRY: Duration = Duration::from_secs(1);

/// Whether the hub is shutting down; set once, seen by every request and
/// stream. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// `true` once draining began; streams wait on it.
    draining: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A hub that is not shutting down.
    pub fn new() -> Self {
        Shutdown {
            draining: watch::Sender::new(false),
        }
    }

    /// Starts draining (see the module docs); idempotent.
    pub fn begin(&self) {
        self.draining.send_replace(true);
    }

    /// Whether draining began.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Returns what a stream waits on (see [`Shutdown::began`]).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Resolves once draining began (at once if it has).
    pub async fn began(watch: &mut watch::Receiver<bool>) {
        // An error means the sender is gone: the hub is gone, so stop too.
        let _ = watch.wait_for(|draining| *draining).await;
    }
}

/// While the hub drains, answers every new request 503 with `Retry-After`
/// and closes its connection; a response to a request that arrived before
/// closes its connection too, so keep-alive connections do not hold the
/// shutdown up.
pub async fn refuse_while_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    let shutdown = req.app_data::<web::Data<Shutdown>>().cloned();
    if shutdown
        .as_ref()
        .is_some_and(|shutdown| shutdown.is_draining())
    {
        let response = HttpResponse::ServiceUnavailable()
            .force_close()
            .insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS)))
            .json(serde_json::json!({ "error": "shutting down, retry later" }));
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    if shutdown.is_some_and(|shutdown| shutdown.is_draining()) {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn streams_see_the_shutdown_begin_once_even_if_they_look_late() {
        let shutdown = Shutdown::new();
        let mut early = shutdown.watch();
        assert!(!shutdown.is_draining());
        let waiting = actix_web::rt::spawn(async move { Shutdown::began(&mut early).await });
        shutdown.begin();
        shutdown.begin();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_draining());
        let mut late = shutdown.watch();
        tokio::time::timeout(Duration::from_secs(5), Shutdown::began(&mut late))
            .await
            .unwrap();
    }
}
