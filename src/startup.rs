//! Builds the application: opens the store, starts the actors, binds the
//! listener and serves HTTP. Tests call [`Application::build`] with port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::config::{Retention, Settings};
use crate::hub::{Hub, HubSettings};
use crate::limits::RequestDeadline;
use crate::metrics::Metrics;
use crate::request_id::REQUEST_ID_HEADER;
use crate::shutdown::{SETTLE_TIMEOUT, SHUTDOWN_TIMEOUT, Shutdown};
use crate::sse::StreamLimiter;
use crate::state::AppState;
use crate::store::PruneTarget;
use crate::store::Store;
use crate::webhooks::ses::{SnsSubscriptions, SnsVerifier};

/// A built, bound, not yet running statushub.
pub struct Application {
    /// The bound port (tests bind port 0 and read it here).
    port: u16,
    /// The running server; awaiting it serves until it is stopped.
    server: Server,
    /// Stops the server (see [`Stopper`]).
    stopper: Stopper,
    /// Settled once the server has stopped, so the last commits end
    /// before the store closes.
    hub: Hub,
    /// Closed once the server has stopped and the hub settled.
    store: Store,
}

/// Stops a running [`Application`] gracefully: draining first, then the
/// server (see [`crate::shutdown`]). Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    shutdown: Shutdown,
    server: ServerHandle,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl Stopper {
    /// Begins draining and stops the server gracefully; returns once it
    /// has stopped (at most [`SHUTDOWN_TIMEOUT`] after the call).
    pub async fn stop(&self) {
        self.shutdown.begin();
        self.server.stop(true).await;
    }
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Opens the store (running migrations), starts the hub's actors and
    /// binds the listener. Must run inside an actix system.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.store_settings())
            .await
            .with_context(|| {
                format!(
                    "failed to open the store at {}",
                    redact(&settings.database_url)
                )
            })?;
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("failed to bind {}", settings.bind))?;
        Self::build_with(settings, store, listener).await
    }

    /// Like [`Application::build`], with an opened store and a bound listener.
    pub async fn build_with(
        settings: Settings,
        store: Store,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        // Settings built in code (tests, embedders) pass the same checks as
        // the environment's.
        crate::secrets::check_secrets(&settings.secrets)?;
        if let Some(secret) = &settings.ses_webhook_secret {
            crate::secrets::check_ses_webhook_secret(secret)?;
        }
        let port = listener.local_addr()?.port();
        let metrics = Metrics::new();
        metrics
            .db_queue_capacity
            .set(i64::try_from(settings.max_queue).unwrap_or(i64::MAX));
        // The store was just opened (and migrated): it answers.
        metrics.ready.set(1);
        // Before the listener accepts anything: with a shared store, every
        // commit from here on is followed.
        let hub = Hub::start(
            store.clone(),
            metrics.clone(),
            HubSettings {
                max_batch: settings.max_batch,
                max_queue: settings.max_queue,
                campaign_idle: settings.campaign_idle,
                directory_capacity: settings.id_directory_capacity,
                sse_coalesce: settings.sse_coalesce,
            },
        )
        .await
        .context("failed to follow the store's changes")?;
        if !settings.enable_webhook_verification {
            tracing::warn!(
                "WEBHOOK SIGNATURE VERIFICATION IS DISABLED: anyone can post statuses; never run like this in production"
            );
        }
        let shared_store = store.feed_opener().is_some();
        spawn_retention(
            hub.clone(),
            settings.retention,
            shared_store,
            metrics.clone(),
        );
        let authenticator = web::Data::new(Authenticator::new(
            &settings.secrets.auth_secret,
            &settings.secrets.admin_token,
        ));
        let body_limit = settings.body_limit;
        let api_body_limit = settings.api_body_limit;
        let workers = settings
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1);
        let nofile = crate::limits::raise_nofile_limit();
        let max_connections = crate::limits::connection_cap(settings.max_connections, nofile);
        if max_connections < settings.max_connections {
            tracing::warn!(
                wanted = settings.max_connections,
                allowed = max_connections,
                "connection cap lowered to stay below the open-file limit"
            );
        }
        tracing::info!(
            max_connections,
            request_timeout_secs = settings.request_timeout.as_secs_f64(),
            "client limits"
        );
        let deadline = web::Data::new(RequestDeadline(settings.request_timeout));
        let reads = web::Data::new(store.clone());
        let verifier = web::Data::new(
            SnsVerifier::new(settings.sns_cert_dir.clone())
                .with_download_override(settings.sns_cert_download_override.clone())
                .with_failure_counter(metrics.sns_certificate_failures.clone()),
        );
        let subscriptions = web::Data::new(SnsSubscriptions::new(
            settings.sns_subscribe_override.clone(),
        ));
        let limiter = web::Data::new(StreamLimiter::new(settings.stream_limits));
        let shutdown = Shutdown::new();
        let draining = web::Data::new(shutdown.clone());
        let settled_hub = hub.clone();
        let state = web::Data::new(AppState {
            hub,
            metrics,
            started_at: Instant::now(),
            settings: Arc::new(settings),
        });
        let server = HttpServer::new(move || {
            App::new()
                // Outermost is last: `observe` sees every answer (the guard's 408
                // and 415, the drain's 503, json_errors' 404/405) and gives each
                // its X-Request-Id; the guard and the drain answer JSON themselves.
                .wrap(from_fn(crate::error::json_errors))
                .wrap(from_fn(crate::limits::guard))
                .wrap(from_fn(crate::shutdown::refuse_while_draining))
                .wrap(from_fn(observe))
                .app_data(draining.clone())
                .app_data(deadline.clone())
                .app_data(state.clone())
                .app_data(reads.clone())
                .app_data(verifier.clone())
                .app_data(subscriptions.clone())
                .app_data(limiter.clone())
                .app_data(authenticator.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .configure(crate::webhooks::configure)
                .configure(crate::sse::configure)
                .configure(|cfg| crate::api::configure(cfg, api_body_limit))
                .configure(crate::ops::configure)
                .configure(crate::openapi::configure)
                .default_service(web::to(crate::openapi::unmatched))
        })
        .client_request_timeout(Duration::from_secs(10))
        // Signals are handled in `run_until_signalled`, which drains first.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
        .workers(workers)
        .max_connections(crate::limits::per_worker(max_connections, workers));
        let server = server.listen(listener)?.run();
        tracing::info!(port, "statushub listening");
        let stopper = Stopper {
            shutdown,
            server: server.handle(),
        };
        Ok(Application {
            port,
            server,
            stopper,
            hub: settled_hub,
            store,
        })
    }

    /// Returns the port the listener is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns what stops this application gracefully.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until the server is stopped (by a [`Stopper`]), then lets the
    /// last commits end (at most [`SETTLE_TIMEOUT`]) and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if !self.hub.settle(SETTLE_TIMEOUT).await {
            tracing::warn!("writes were still queued when the store closed; none was acknowledged");
        }
        self.store.close().await;
        tracing::info!("statushub stopped");
        result
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully (see
    /// [`crate::shutdown`]): what the binary runs.
    pub async fn run_until_signalled(self) -> std::io::Result<()> {
        let stopper = self.stopper();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        actix_web::rt::spawn(async move {
            let signal = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(
                signal,
                timeout_secs = SHUTDOWN_TIMEOUT.as_secs(),
                "shutting down: refusing new requests, finishing those in flight"
            );
            stopper.stop().await;
        });
        self.run_until_stopped().await
    }
}

/// How long the outbox that instances sharing a store follow
/// (`campaign_changes`, PostgreSQL) is kept: far longer than any follower
/// lags while it can reach the database.
const OUTBOX_RETENTION: Duration = Duration::from_secs(3600);

/// Applies retention every `retention.interval`: buffered statuses for
/// unknown messages, timeline events and dead letters past their age go, in
/// small batches (see [`crate::hub::Hub::prune`]), and, on a store several
/// instances share, outbox rows older than [`OUTBOX_RETENTION`].
fn spawn_retention(hub: Hub, retention: Retention, shared_store: bool, metrics: Metrics) {
    let targets = [
        (PruneTarget::Unmatched, Some(retention.unmatched)),
        (PruneTarget::Events, retention.events),
        (PruneTarget::DeadLetters, retention.dead_letters),
        (
            PruneTarget::Outbox,
            shared_store.then_some(OUTBOX_RETENTION),
        ),
    ];
    actix_web::rt::spawn(async move {
        let mut interval = actix_web::rt::time::interval(retention.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for (target, keep) in targets {
                let Some(keep) = keep else { continue };
                match hub.prune(target, keep).await {
                    Ok(0) => {}
                    Ok(removed) => {
                        metrics
                            .pruned_rows
                            .with_label_values(&[target.as_str()])
                            .inc_by(removed);
                        tracing::info!(table = target.as_str(), removed, "retention pruned rows");
                    }
                    Err(error) => {
                        tracing::warn!(table = target.as_str(), %error, "retention pass failed");
                    }
                }
            }
        }
    });
}

/// Gives each request a span with its request id (see
/// [`crate::request_id`]), method, path (never the query string, which may
/// hold a token) and route pattern, echoes the id in `X-Request-Id` on every
/// response (errors, the guard's 408/415, 404s and streams included), and
/// counts the request by route and status code.
///
/// The line for a finished request (`status`, `duration_ms`) is logged at
/// `debug`: at info, the hot path (thousands of webhooks a second) would
/// spend a good part of its time writing log lines. Failures that need
/// someone show at `warn`/`error` on their own: a 5xx other than 503 here,
/// internal and store errors where they happen, refused signatures in the
/// webhook handlers. 503s are the designed answer to a full write queue,
/// counted (`statushub_db_queue_rejections_total`) rather than logged one
/// by one while the hub is already overloaded.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    // The app state is one `Arc`: cloning it is one increment, where
    // cloning `Metrics` would be one per metric.
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = crate::request_id::request_id(req.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.to_str().unwrap_or_default(),
        method = %req.method(),
        path = %req.path(),
        route = %route,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let (result, code) = match result {
        Ok(mut response) => {
            response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
            let code = response.status();
            (Ok(response), code)
        }
        // Rare (handlers' errors are responses by now): answer as actix
        // would, with the id. The `HttpRequest` an `Ok` needs cannot be
        // kept aside: holding a clone of it breaks routing.
        Err(error) => {
            let mut response = error.error_response();
            response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
            let code = response.status();
            let error = actix_web::error::InternalError::from_response(error, response);
            (Err(error.into()), code)
        }
    };
    let elapsed = started.elapsed();
    // Whole microseconds: a readable number in the log.
    let duration_ms = elapsed.as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        if code.is_server_error() && code != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(status = code.as_u16(), duration_ms, "request failed");
        } else {
            tracing::debug!(status = code.as_u16(), duration_ms, "request finished");
        }
    });
    if let Some(state) = state {
        state
            .metrics
            .http_requests
            .with_label_values(&[route.as_str(), code.as_str()])
            .inc();
        state
            .metrics
            .http_request_seconds
            .with_label_values(&[route.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    result
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
