//! Live streams over Server-Sent Events.
//!
//! - `GET /api/v1/campaigns/{id}/stream`: one campaign. Event ids are the
//!   campaign's counters `version`; each `status` event carries the version
//!   its change produced, so `Last-Event-ID` names a point in the campaign's
//!   history unambiguously.
//! - `GET /api/v1/stream`: every campaign of the token's tenant (every
//!   tenant's for the admin). Versions are per campaign, so here ids are the
//!   global status-event cursor (`status_events.id`), which orders changes
//!   across campaigns.
//! - `GET /webhooks/stream`: the admin's raw tail of incoming events.
//!
//! On connect: `retry:`, then `event: snapshot` (counters). Then `event:
//! metrics`, coalesced to at most one per campaign per window, always ending
//! on the latest state; with `?include=statuses`, `event: status` per
//! message change. On a campaign stream, `snapshot` and `metrics` carry the
//! body of `GET …/metrics` (counters, failure reasons, cost), and with
//! `?include=timeseries` an `event: timeseries` follows the snapshot (the
//! latest window) and each `metrics` event whose window moved the funnel
//! (the buckets changed since the client's last one): see
//! [`stream::CampaignExtras`]. With `Last-Event-ID`: a fresh snapshot if anything
//! changed, then the missed status events replayed from the store (at most
//! [`crate::config::Settings::sse_replay_limit`]; beyond it, or past the
//! timeline's retention, `event: reset` and a snapshot). Comment heartbeats
//! keep proxies from closing idle connections.
//!
//! Each stream subscribes to one topic of the hub's broadcaster
//! ([`crate::hub::broadcast`]) before reading its snapshot: its campaign,
//! its tenant, or every campaign (the admin without `tenant_id`). Metrics
//! arrive already coalesced, once per campaign per window for all streams,
//! so a connection keeps no timer and is woken only when its topic changed.
//! The one periodic cost of an idle stream is actix-web-lab's keep-alive: a
//! fixed-period timer per response (not reset by events) that writes the
//! heartbeat comment.
//!
//! When the hub shuts down, every stream ends after `event: shutdown` with a
//! `retry:` hint (see [`crate::shutdown`]); a stream's connection closes
//! when it ends.
//!
//! A stream ends when its token expires, after `event: expired`: the client
//! reconnects with a fresh token. Open streams are capped in total, per
//! tenant and per token ([`StreamLimiter`]); beyond a cap, 429 with
//! `Retry-After`.

mod encode;
mod limiter;
mod stream;

use actix_web::{HttpRequest, Responder, web};
use actix_web_lab::sse;
use bytestring::ByteString;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::{IntoParams, OpenApi, ToSchema};

pub use limiter::{StreamLimiter, StreamPermit};

use crate::access::resolve_campaign;
use crate::api::campaigns::{campaign_summary, metrics_json, timeseries_json};
use crate::auth::Caller;
use crate::domain::CampaignCounters;
use crate::error::{ApiError, ErrorBody};
use crate::hub::{Follow, IncomingEvent, Subscription};
use crate::shutdown::{SHUTDOWN_RETRY, Shutdown};
use crate::state::AppState;
use crate::store::{EventPosition, Store};
use stream::{CampaignExtras, Connection, IdMode, MAX_SNAPSHOT_CAMPAIGNS, Scope, StreamCounters};

/// Events buffered per connection between its task and the socket. A client
/// that lets this fill is slow: it skips to the latest metrics, or is
/// disconnected with `event: lagged` if it asked for statuses.
const CONNECTION_BUFFER: usize = 256;

/// The `retry:` hint sent on connect.
const RETRY_HINT: std::time::Duration = std::time::Duration::from_secs(3);

/// Registers the stream routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/v1/campaigns/{campaign_id}/stream",
        web::get().to(campaign_stream),
    )
    .route("/api/v1/stream", web::get().to(tenant_stream))
    .route("/webhooks/stream", web::get().to(incoming_stream));
}

/// Query of the stream endpoints.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Whose campaigns: defaults to the token's tenant (the admin's
    /// `/api/v1/stream` without it follows every tenant).
    tenant_id: Option<String>,
    /// Comma-separated: `statuses` adds `event: status`; `timeseries`
    /// (campaign stream only) adds `event: timeseries`.
    include: Option<String>,
    /// The time series' bucket width with `include=timeseries`: `1m`
    /// (default), `5m` or `1h`.
    #[param(pattern = "^(1m|5m|1h)$")]
    bucket: Option<String>,
    /// For clients that cannot set `Last-Event-ID` on the first request.
    last_event_id: Option<String>,
}

/// One Server-Sent Event of `/api/v1/campaigns/{id}/stream` and
/// `/api/v1/stream`, as the OpenAPI document describes each event of a
/// `text/event-stream` answer. Only the document's view: events are written
/// by [`stream::Connection`].
#[derive(ToSchema)]
#[allow(dead_code)]
struct CampaignEvent {
    event: CampaignEventName,
    /// JSON: the campaign's counters (`snapshot`, `metrics`; see
    /// `CampaignCounters`; on the campaign stream with its failure reasons
    /// and cost, as `MetricsView`), the changed funnel buckets
    /// (`timeseries`, see `TimeseriesEvent`), one message change
    /// (`status`), `{}` (`reset`), `{"reason": …}` (`expired`, `shutdown`)
    /// or `{"skipped": N}` (`lagged`).
    #[schema(content_media_type = "application/json")]
    data: String,
    /// The campaign's `version` (campaign stream) or the status-event
    /// cursor (tenant stream): send it back as `Last-Event-ID` to resume.
    id: Option<String>,
}

/// The `data:` of `event: timeseries` (document only): sent on connect
/// (`snapshot: true`, the latest window as `GET …/timeseries` gives it;
/// on a resume, the changes since `Last-Event-ID` instead), then after each
/// `metrics` event whose window moved a bucket or the latency.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TimeseriesEvent {
    tenant_id: String,
    campaign_id: String,
    /// `1m`, `5m` or `1h` (`?bucket=`).
    bucket: String,
    /// The campaign's counters version the buckets are at least as new
    /// as; also the event's `id:`.
    version: i64,
    /// `true`: the buckets replace the client's; `false`: only the buckets
    /// that changed (zeros included), each replacing the client's bucket
    /// of the same start.
    snapshot: bool,
    /// `false` when over 1440 buckets changed and only the newest are
    /// listed: read the rest from `GET …/timeseries`.
    complete: bool,
    buckets: Vec<crate::api::campaigns::BucketView>,
    latency: crate::api::campaigns::LatencyView,
}

/// The `event:` names of the campaign and tenant streams.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum CampaignEventName {
    /// A campaign's counters on connect or resume.
    Snapshot,
    /// A campaign's counters after changes, coalesced.
    Metrics,
    /// One message's change (`?include=statuses`).
    Status,
    /// The campaign's funnel buckets that changed, after the `metrics`
    /// event of the same id (campaign stream, `?include=timeseries`).
    Timeseries,
    /// The resume point is too old: a snapshot follows.
    Reset,
    /// The token expired: the stream ends.
    Expired,
    /// The client was too slow for `?include=statuses`: the stream ends.
    Lagged,
    /// The server is shutting down (`retry: 1000`): reconnect, with
    /// `Last-Event-ID`, to whichever instance answers.
    Shutdown,
}

/// One Server-Sent Event of `/webhooks/stream` (document only).
#[derive(ToSchema)]
#[allow(dead_code)]
struct IncomingStreamEvent {
    event: IncomingEventName,
    /// JSON: an `IncomingEvent` (`webhook`), `{"skipped": N}` (`lagged`)
    /// or `{"reason": …}` (`shutdown`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The `event:` names of `/webhooks/stream`.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum IncomingEventName {
    /// One provider event as it came in.
    Webhook,
    /// Events the client was too slow for were skipped.
    Lagged,
    /// The server is shutting down (`retry: 1000`): the stream ends.
    Shutdown,
}

/// The OpenAPI description of the routes [`configure`] registers: a route
/// added there is annotated with `#[utoipa::path]` and listed here.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(campaign_stream, tenant_stream, incoming_stream),
    components(schemas(CampaignCounters, IncomingEvent, TimeseriesEvent))
)]
pub struct Doc;

impl std::fmt::Debug for StreamQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamQuery")
            .field("tenant_id", &self.tenant_id)
            .field("include", &self.include)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// What `?include=` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Include {
    statuses: bool,
    timeseries: bool,
}

impl StreamQuery {
    /// Parses `?include=`: a comma-separated list of `statuses` and
    /// `timeseries`; anything else is refused, naming what is accepted.
    fn include(&self) -> Result<Include, ApiError> {
        let mut include = Include::default();
        for part in self.include.as_deref().unwrap_or("").split(',') {
            match part.trim() {
                "" => {}
                "statuses" => include.statuses = true,
                "timeseries" => include.timeseries = true,
                _ => {
                    return Err(ApiError::BadRequest(
                        "include takes statuses and timeseries (comma-separated)".to_owned(),
                    ));
                }
            }
        }
        Ok(include)
    }

    /// Returns the bucket name and width of `?bucket=` (`1m` by default).
    fn bucket(&self) -> Result<(&'static str, i64), ApiError> {
        match self.bucket.as_deref().unwrap_or("1m") {
            "1m" => Ok(("1m", 1)),
            "5m" => Ok(("5m", 5)),
            "1h" => Ok(("1h", 60)),
            _ => Err(ApiError::BadRequest(
                "bucket must be 1m, 5m or 1h".to_owned(),
            )),
        }
    }
}

/// Returns the resume point: `Last-Event-ID`, else `?last_event_id=`.
fn last_event_id(req: &HttpRequest, query: &StreamQuery) -> Option<i64> {
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    header
        .or_else(|| query.last_event_id.clone())
        .and_then(|id| id.trim().parse().ok())
}

/// Returns the SSE response reading from `rx`, with the retry hint and
/// heartbeats. Its connection closes when the stream ends (token expired,
/// shutdown): a client reconnecting then opens a new connection, which a
/// load balancer may send elsewhere, and a hub shutting down is not held
/// up by the idle connection.
fn respond(
    req: &HttpRequest,
    rx: mpsc::Receiver<sse::Event>,
    state: &AppState,
) -> impl Responder + use<> {
    let mut response = sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(state.settings.sse_heartbeat)
        .with_retry_duration(RETRY_HINT)
        .respond_to(req);
    // Tell buffering proxies (nginx) to pass events through at once.
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("x-accel-buffering"),
        actix_web::http::header::HeaderValue::from_static("no"),
    );
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

/// Takes a stream slot for `caller`, counting refusals.
fn acquire(
    state: &AppState,
    limiter: &StreamLimiter,
    caller: &Caller,
) -> Result<StreamPermit, ApiError> {
    limiter.acquire(caller).inspect_err(|error| {
        state.metrics.sse_streams_refused.inc();
        tracing::debug!(%error, "stream refused");
    })
}

/// Runs a connection until its client leaves or its token expires, holding
/// its stream slot all along.
fn spawn(
    mut connection: Connection,
    caller: &Caller,
    permit: StreamPermit,
    live: Subscription,
    state: &AppState,
    store: &Store,
    shutdown: &Shutdown,
) {
    if let Some(expires) = caller.expires_at() {
        connection.expire_at(expires);
    }
    let hub = state.hub.clone();
    let store = store.clone();
    let shutdown = shutdown.watch();
    actix_web::rt::spawn(async move {
        let _permit = permit;
        connection.run(live, hub, store, shutdown).await;
    });
}

/// `GET /api/v1/campaigns/{id}/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{campaign_id}/stream",
    tag = "streams",
    params(
        ("campaign_id" = String, Path, description = "The campaign, in the token's tenant or `tenant_id`", example = "spring-sale"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        StreamQuery,
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The stream: `retry:`, `snapshot` (the metrics body: counters, failure reasons, cost), with `?include=timeseries` a `timeseries` snapshot, then `metrics` (and `status` with `?include=statuses`, `timeseries` with `?include=timeseries`) as they happen; comment heartbeats", content_type = "text/event-stream", body = CampaignEvent),
        (status = 400, description = "A query that does not parse, an `include` other than statuses and timeseries, a `bucket` other than 1m/5m/1h, or a campaign name several tenants use and no `tenant_id`", body = ErrorBody),
        (status = 403, description = "Another tenant's `tenant_id`, or a campaign the token does not cover", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 429, description = "A cap on open streams (total, per tenant or per token) is reached", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
#[allow(clippy::too_many_arguments)]
async fn campaign_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    shutdown: web::Data<Shutdown>,
    store: web::Data<Store>,
    limiter: web::Data<StreamLimiter>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<StreamQuery>,
) -> Result<impl Responder + use<>, ApiError> {
    let include = query.include()?;
    let bucket = query.bucket()?;
    let campaign = resolve_campaign(&store, &caller, query.tenant_id.as_deref(), &path).await?;
    let permit = acquire(&state, &limiter, &caller)?;
    let include_statuses = include.statuses;
    let resume = last_event_id(&req, &query);
    // Subscribe before reading the snapshot: nothing committed in between is missed.
    let live = state
        .hub
        .broadcaster()
        .subscribe(Follow::Campaign(campaign.campaign_pk), include_statuses);
    let snapshot = state.hub.counters(campaign.campaign_pk).await?;
    // On a store several instances share, this instance may not have
    // followed a change that the client saw on another one yet: a client
    // resuming from a later version gets the committed counters, never
    // older ones than it has.
    let snapshot = match resume {
        Some(after) if after > snapshot.version => store
            .campaign_counters(campaign.campaign_pk)
            .await?
            .filter(|stored| stored.version > snapshot.version)
            .unwrap_or(snapshot),
        _ => snapshot,
    };
    let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
    let mut connection = Connection::new(
        tx,
        Scope::Campaign(campaign.campaign_pk),
        include_statuses,
        IdMode::Version,
        StreamCounters::new(&state.metrics),
    );
    let extras = CampaignExtras::new(&campaign, include.timeseries.then_some(bucket));
    let series_name = extras.series.map(|(name, _)| name);
    connection.with_extras(extras);
    // The snapshot carries the failure reasons and cost, read after the
    // counters: a later change to them comes with a later version.
    let snapshot_data = || async {
        let summary = campaign_summary(&store, campaign.campaign_pk).await?;
        Ok::<_, ApiError>(ByteString::from(
            metrics_json(&snapshot, &summary).to_string(),
        ))
    };
    // With `include=timeseries` the latest window follows the snapshot on
    // every connect, resumes included: a resuming client's series may be
    // older than the id it sends (a `timeseries` event lost with its
    // connection, or a read that failed), so that id is not trusted for it.
    // Read after the counters, so that every later change has a later
    // version; queued before any replayed status, so it is never the event
    // a full buffer drops.
    let series = match series_name {
        Some(name) => {
            let mut body = timeseries_json(&store, &campaign, name, None, None).await?;
            let latency = body.get("latency").cloned().unwrap_or_default();
            if let Some(object) = body.as_object_mut() {
                object.insert("version".to_owned(), snapshot.version.into());
                object.insert("snapshot".to_owned(), true.into());
                object.insert("complete".to_owned(), true.into());
            }
            Some((ByteString::from(body.to_string()), latency))
        }
        None => None,
    };
    let send_series = |connection: &mut Connection| {
        if let Some((data, latency)) = &series {
            connection.series(snapshot.version, data.clone(), latency.clone());
        }
    };
    match resume {
        // The client is up to date: no snapshot until the next change.
        Some(version) if version == snapshot.version => {
            connection.seen(campaign.campaign_pk, version);
            send_series(&mut connection);
        }
        Some(after) if include_statuses => {
            let limit = state.settings.sse_replay_limit;
            // Past the timeline's retention the replay would have a gap.
            let pruned = store.campaign_pruned_version(campaign.campaign_pk).await?;
            let missed = if after < pruned {
                None
            } else {
                Some(
                    store
                        .replay_campaign(campaign.campaign_pk, after, limit + 1)
                        .await?,
                )
            };
            let missed = missed.filter(|missed| missed.len() <= limit as usize);
            if let Some(missed) = missed {
                let data = snapshot_data().await?;
                connection.snapshot_data(campaign.campaign_pk, snapshot.version, data);
                send_series(&mut connection);
                for change in &missed {
                    connection.replayed_status(&campaign.tenant_id, &campaign.campaign_id, change);
                }
            } else {
                connection.reset();
                let data = snapshot_data().await?;
                connection.snapshot_data(campaign.campaign_pk, snapshot.version, data);
                send_series(&mut connection);
            }
        }
        _ => {
            let data = snapshot_data().await?;
            connection.snapshot_data(campaign.campaign_pk, snapshot.version, data);
            send_series(&mut connection);
        }
    }
    // Changes up to the snapshot are in it (or were replayed).
    connection.advance_cursor(EventPosition {
        xact: 0,
        event_id: snapshot.version,
    });
    spawn(connection, &caller, permit, live, &state, &store, &shutdown);
    Ok(respond(&req, rx, &state))
}

/// `GET /api/v1/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/stream",
    tag = "streams",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
        StreamQuery,
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The stream: `retry:`, a `snapshot` per campaign, then `metrics` (and `status` with `?include=statuses`) as they happen; comment heartbeats", content_type = "text/event-stream", body = CampaignEvent),
        (status = 400, description = "A query that does not parse, or an `include` other than statuses (`timeseries` is for a campaign stream)", body = ErrorBody),
        (status = 403, description = "Another tenant's `tenant_id`", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 429, description = "A cap on open streams (total, per tenant or per token) is reached", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn tenant_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    shutdown: web::Data<Shutdown>,
    store: web::Data<Store>,
    limiter: web::Data<StreamLimiter>,
    caller: Caller,
    query: web::Query<StreamQuery>,
) -> Result<impl Responder + use<>, ApiError> {
    let tenant = match (&caller, query.tenant_id.as_deref()) {
        (Caller::Admin, tenant) => tenant.map(str::to_owned),
        (Caller::Tenant(claims), Some(tenant)) if tenant != claims.sub => {
            return Err(ApiError::Forbidden("this token is for another tenant"));
        }
        (Caller::Tenant(claims), _) => Some(claims.sub.clone()),
    };
    let allowed = match &caller {
        Caller::Tenant(claims) => claims.campaigns.clone(),
        Caller::Admin => None,
    };
    let include = query.include()?;
    if include.timeseries {
        return Err(ApiError::BadRequest(
            "include=timeseries is for one campaign's stream: /api/v1/campaigns/{campaign_id}/stream"
                .to_owned(),
        ));
    }
    let permit = acquire(&state, &limiter, &caller)?;
    let include_statuses = include.statuses;
    let resume = last_event_id(&req, &query);
    // Subscribe before reading the snapshot: nothing committed in between
    // is missed. A tenant's streams follow the tenant's topic (a restricted
    // token's keep its campaigns); the admin's without `tenant_id`, every
    // campaign.
    let follow = match &tenant {
        Some(tenant) => Follow::Tenant(tenant.clone()),
        None => Follow::Everything,
    };
    let live = state.hub.broadcaster().subscribe(follow, include_statuses);
    let (covered, campaigns) = store
        .tenant_snapshot(tenant.as_deref(), MAX_SNAPSHOT_CAMPAIGNS)
        .await?;
    let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
    let scope = Scope::Tenant {
        tenant_id: tenant.clone(),
        campaigns: allowed.clone(),
    };
    let mut connection = Connection::new(
        tx,
        scope.clone(),
        include_statuses,
        IdMode::EventCursor,
        StreamCounters::new(&state.metrics),
    );
    let mut replay = Vec::new();
    let mut overflow = false;
    let mut resumed_at = EventPosition::default();
    if let (Some(after), true) = (resume, include_statuses) {
        let limit = state.settings.sse_replay_limit;
        // Past the timeline's retention the replay would have a gap, and
        // an event whose position is unknown cannot be resumed from.
        let position = if after < store.events_pruned_through().await? {
            None
        } else {
            store.event_position(after).await?
        };
        match position {
            None => overflow = true,
            Some(position) => {
                resumed_at = position;
                replay = store
                    .replay_tenant(tenant.as_deref(), allowed.as_deref(), position, limit + 1)
                    .await?;
                overflow = replay.len() > limit as usize;
            }
        }
    }
    if overflow {
        connection.reset();
    } else if resume.is_some() && include_statuses {
        connection.resumed();
    }
    // Always snapshot: registrations and new campaigns change counters
    // without a status event, so the cursor cannot tell whether they moved.
    connection.advance_cursor(covered.max(resumed_at));
    for (campaign_pk, counters) in &campaigns {
        if scope.admits(*campaign_pk, counters) {
            connection.snapshot(*campaign_pk, counters);
        }
    }
    if !overflow {
        for (campaign, change) in &replay {
            connection.replayed_status(&campaign.tenant_id, &campaign.campaign_id, change);
        }
    }
    spawn(connection, &caller, permit, live, &state, &store, &shutdown);
    Ok(respond(&req, rx, &state))
}

/// `GET /webhooks/stream`: admin only.
#[utoipa::path(
    get,
    path = "/webhooks/stream",
    tag = "streams",
    security(("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "Every provider event as it comes in (`webhook`), for the debug page", content_type = "text/event-stream", body = IncomingStreamEvent),
        (status = 403, description = crate::openapi::ADMIN_ONLY, body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 429, description = "A cap on open streams (total, per tenant or per token) is reached", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
async fn incoming_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    shutdown: web::Data<Shutdown>,
    limiter: web::Data<StreamLimiter>,
    caller: Caller,
) -> Result<impl Responder + use<>, ApiError> {
    caller.require_admin()?;
    let permit = acquire(&state, &limiter, &caller)?;
    let mut incoming = state.hub.broadcaster().subscribe_incoming();
    let (tx, rx) = mpsc::channel(CONNECTION_BUFFER);
    let mut shutdown = shutdown.watch();
    actix_web::rt::spawn(async move {
        // Holds the stream's slot until the client goes away.
        let _permit = permit;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                () = Shutdown::began(&mut shutdown) => {
                    let _ = tx.try_send(encode::shutdown_event(SHUTDOWN_RETRY));
                    return;
                }
                received = incoming.recv() => {
                    let event = match received {
                        Ok(event) => sse::Data::new_json(&*event).map(|data| data.event("webhook").into()),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                            Ok(sse::Data::new(format!("{{\"skipped\":{skipped}}}")).event("lagged").into())
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let Ok(event) = event else { continue };
                    // A debug tail that cannot keep up drops events rather than buffering.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(event) {
                        return;
                    }
                }
            }
        }
    });
    Ok(respond(&req, rx, &state))
}
