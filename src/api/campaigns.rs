//! `GET /api/v1/campaigns/{id}/metrics` and `GET /api/v1/campaigns/{id}/timeseries`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::access::resolve_campaign;
use crate::auth::Caller;
use crate::clock::format_ms;
use crate::domain::CampaignCounters;
use crate::domain::analytics::{MINUTE_MS, STAGES, bucket_start, minute_of, percentile};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::{CampaignInfo, Store, StoreError};

/// Most buckets one time-series response holds: a day of minutes, five
/// days of 5-minute buckets, sixty days of hours.
pub const MAX_BUCKETS: i64 = 1440;

/// Most failure reasons the metrics list by name (the rest are summed in
/// `failure_reasons_other`).
pub const MAX_REASONS: u32 = 20;

/// `?tenant_id=`: whose campaign; defaults to the token's tenant (the admin
/// may omit it when the campaign name is unique).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Whose campaign: defaults to the token's tenant.
    tenant_id: Option<String>,
}

/// Returns a campaign's live counters, with its failure reasons and cost.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{campaign_id}/metrics",
    tag = "api",
    params(
        ("campaign_id" = String, Path, description = "The campaign, in the token's tenant or `tenant_id`", example = "spring-sale"),
        TenantQuery,
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The campaign's counters, failure reasons and cost", body = MetricsView),
        (status = 400, description = "A query that does not parse, or a campaign name several tenants use and no `tenant_id`", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "Another tenant's `tenant_id`, or a campaign the token does not cover", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn metrics(
    state: web::Data<AppState>,
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let campaign = resolve_campaign(&store, &caller, query.tenant_id.as_deref(), &path).await?;
    let counters = state.hub.counters(campaign.campaign_pk).await?;
    let summary = campaign_summary(&store, campaign.campaign_pk).await?;
    let body = metrics_json(&counters, &summary);
    Ok(HttpResponse::Ok().json(body))
}

/// Reads what the metrics add to a campaign's counters: its top failure
/// reasons (`failure_reasons`, `failure_reasons_other`) and its cost.
/// Shared by `GET …/metrics` and the campaign stream's events.
pub async fn campaign_summary(
    store: &Store,
    campaign_pk: i64,
) -> Result<Map<String, Value>, StoreError> {
    let (reasons, others) = store.campaign_reasons(campaign_pk, MAX_REASONS).await?;
    let pricing = store.campaign_pricing(campaign_pk).await?;
    let mut summary = Map::new();
    summary.insert(
        "failure_reasons".to_owned(),
        reasons
            .into_iter()
            .map(|(reason, messages)| {
                json!({"kind": reason.kind, "code": reason.code, "title": reason.title,
                       "messages": messages})
            })
            .collect(),
    );
    summary.insert("failure_reasons_other".to_owned(), json!(others));
    summary.insert("cost".to_owned(), cost_json(&pricing));
    Ok(summary)
}

/// Returns the metrics answer: the counters' fields, then the summary's.
pub fn metrics_json(counters: &CampaignCounters, summary: &Map<String, Value>) -> Value {
    let mut body = serde_json::to_value(counters).unwrap_or_else(|_| json!({}));
    if let Some(object) = body.as_object_mut() {
        object.extend(
            summary
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
    }
    body
}

/// The `cost` object: priced WhatsApp messages, billable and free, in all
/// and by category.
fn cost_json(pricing: &[(String, bool, i64)]) -> Value {
    let mut by_category: Vec<(String, i64, i64)> = Vec::new();
    for (category, billable, messages) in pricing {
        let at = match by_category.iter().position(|(each, ..)| each == category) {
            Some(at) => at,
            None => {
                by_category.push((category.clone(), 0, 0));
                by_category.len() - 1
            }
        };
        if *billable {
            by_category[at].1 += messages;
        } else {
            by_category[at].2 += messages;
        }
    }
    json!({
        "billable": by_category.iter().map(|each| each.1).sum::<i64>(),
        "free": by_category.iter().map(|each| each.2).sum::<i64>(),
        "by_category": by_category
            .iter()
            .map(|(category, billable, free)| json!({"category": category, "billable": billable, "free": free}))
            .collect::<Vec<_>>(),
    })
}

// The answers below are built as JSON (`json!`) by the handlers; these
// types describe them for the OpenAPI document only, and schemathesis
// (scripts/schemathesis) checks real answers against them.

/// `GET …/metrics`: the counters of `CampaignCounters` and these fields.
#[derive(ToSchema)]
#[allow(dead_code)] // Never built: describes the JSON `metrics` writes.
pub struct MetricsView {
    #[serde(flatten)]
    counters: CampaignCounters,
    /// The most frequent failure reasons (at most 20), most messages first.
    failure_reasons: Vec<FailureReasonView>,
    /// Failed messages whose reason is not among `failure_reasons`.
    failure_reasons_other: i64,
    cost: CostView,
}

/// One failure reason and the messages that failed with it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct FailureReasonView {
    /// `whatsapp_error`, `ses_bounce`, `ses_reject`,
    /// `ses_rendering_failure` or `ses_complaint`.
    kind: String,
    code: String,
    title: String,
    messages: i64,
}

/// Priced WhatsApp messages, billable and free, in all and by category.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CostView {
    billable: i64,
    free: i64,
    by_category: Vec<CostCategoryView>,
}

/// One pricing category's messages.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CostCategoryView {
    category: String,
    billable: i64,
    free: i64,
}

/// `GET …/timeseries`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TimeseriesView {
    tenant_id: String,
    campaign_id: String,
    /// `1m`, `5m` or `1h`.
    bucket: String,
    /// The window's start (inclusive); `null` without activity or window.
    #[schema(format = DateTime)]
    from: Option<String>,
    /// The window's end (exclusive).
    #[schema(format = DateTime)]
    to: Option<String>,
    #[schema(format = DateTime)]
    first_activity: Option<String>,
    #[schema(format = DateTime)]
    last_activity: Option<String>,
    /// Buckets with activity, oldest first.
    buckets: Vec<BucketView>,
    latency: LatencyView,
}

/// One bucket: per stage, the messages that first reached it in the bucket
/// (provider time).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BucketView {
    #[schema(format = DateTime)]
    start: String,
    sent: i64,
    delivered: i64,
    read: i64,
    clicked: i64,
    failed: i64,
}

/// Latency percentiles from `sent`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LatencyView {
    to_delivered: LatencyMeasure,
    to_read: LatencyMeasure,
}

/// One latency measure: the messages measured, p50 and p90 in
/// milliseconds (`null` without any).
#[derive(ToSchema)]
#[allow(dead_code)]
struct LatencyMeasure {
    messages: i64,
    p50_ms: Option<i64>,
    p90_ms: Option<i64>,
}

/// `?bucket=1m|5m|1h&from=&to=&tenant_id=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimeseriesQuery {
    /// Whose campaign: defaults to the token's tenant.
    tenant_id: Option<String>,
    /// Bucket width: `1m` (default), `5m` or `1h`.
    #[param(pattern = "^(1m|5m|1h)$")]
    bucket: Option<String>,
    /// The window's start (RFC 3339); at most 1440 buckets from `from` to
    /// `to`. Without both, the latest activity.
    #[param(format = DateTime)]
    from: Option<String>,
    /// The window's end (RFC 3339, exclusive).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// Returns the width in minutes of a `bucket` value.
pub fn bucket_minutes(bucket: &str) -> Option<i64> {
    match bucket {
        "1m" => Some(1),
        "5m" => Some(5),
        "1h" => Some(60),
        _ => None,
    }
}

/// Parses an RFC 3339 time into Unix milliseconds.
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok())
        .ok_or_else(|| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
}

/// Returns the window `[from, to)` in minutes, aligned on buckets of
/// `width` minutes, of at most [`MAX_BUCKETS`] buckets: the one asked for,
/// else the latest of the campaign's activity. `None` when the campaign has
/// none and no window was asked for.
pub fn window(
    width: i64,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    activity: Option<(i64, i64)>,
) -> Result<Option<(i64, i64)>, ApiError> {
    let span = MAX_BUCKETS * width;
    let from = from_ms.map(|ms| bucket_start(minute_of(ms), width));
    // `to` is exclusive: the bucket holding the instant just before it is in.
    let to = to_ms.map(|ms| bucket_start(minute_of(ms.saturating_sub(1)), width) + width);
    let (from, to) = match (from, to) {
        (Some(from), Some(to)) => {
            if to <= from {
                return Err(ApiError::BadRequest("to must be after from".to_owned()));
            }
            if to - from > span {
                return Err(ApiError::BadRequest(format!(
                    "at most {MAX_BUCKETS} buckets per request: narrow from/to or use a wider bucket"
                )));
            }
            (from, to)
        }
        (Some(from), None) => (from, from + span),
        (None, Some(to)) => (to - span, to),
        (None, None) => {
            let Some((first, last)) = activity else {
                return Ok(None);
            };
            let to = bucket_start(last, width) + width;
            (bucket_start(first, width).max(to - span), to)
        }
    };
    Ok(Some((from, to)))
}

/// Returns a campaign's funnel over time (per bucket of provider time, the
/// messages that first reached each stage) and its latency percentiles.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{campaign_id}/timeseries",
    tag = "api",
    params(
        ("campaign_id" = String, Path, description = "The campaign, in the token's tenant or `tenant_id`", example = "spring-sale"),
        TimeseriesQuery,
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "The campaign's funnel per bucket of provider time and its latency percentiles", body = TimeseriesView),
        (status = 400, description = "A query that does not parse, a `bucket` other than 1m/5m/1h, `to` not after `from`, over 1440 buckets, or a campaign name several tenants use and no `tenant_id`", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "Another tenant's `tenant_id`, or a campaign the token does not cover", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn timeseries(
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<TimeseriesQuery>,
) -> Result<HttpResponse, ApiError> {
    let bucket = query.bucket.as_deref().unwrap_or("1m");
    // Refused before the campaign is looked up.
    bucket_minutes(bucket)
        .ok_or_else(|| ApiError::BadRequest("bucket must be 1m, 5m or 1h".to_owned()))?;
    let from_ms = query
        .from
        .as_deref()
        .map(|text| parse_time("from", text))
        .transpose()?;
    let to_ms = query
        .to
        .as_deref()
        .map(|text| parse_time("to", text))
        .transpose()?;
    let campaign = resolve_campaign(&store, &caller, query.tenant_id.as_deref(), &path).await?;
    let body = timeseries_json(&store, &campaign, bucket, from_ms, to_ms).await?;
    Ok(HttpResponse::Ok().json(body))
}

/// Returns the time-series answer of a campaign for buckets `bucket` (a
/// valid [`bucket_minutes`] value) over `[from_ms, to_ms)`, or the latest
/// activity. Also the campaign stream's `timeseries` snapshot.
pub async fn timeseries_json(
    store: &Store,
    campaign: &CampaignInfo,
    bucket: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> Result<Value, ApiError> {
    let width = bucket_minutes(bucket)
        .ok_or_else(|| ApiError::BadRequest("bucket must be 1m, 5m or 1h".to_owned()))?;
    let activity = store.campaign_minute_range(campaign.campaign_pk).await?;
    let window = window(width, from_ms, to_ms, activity)?;
    let buckets = match window {
        Some((from, to)) => {
            store
                .campaign_buckets(campaign.campaign_pk, width, from, to)
                .await?
        }
        None => Vec::new(),
    };
    let latency = store.campaign_latency(campaign.campaign_pk).await?;
    Ok(json!({
        "tenant_id": campaign.tenant_id,
        "campaign_id": campaign.campaign_id,
        "bucket": bucket,
        "from": window.map(|(from, _)| minute_time(from)),
        "to": window.map(|(_, to)| minute_time(to)),
        "first_activity": activity.map(|(first, _)| minute_time(first)),
        "last_activity": activity.map(|(_, last)| minute_time(last)),
        "buckets": buckets_json(&buckets),
        "latency": latency_json(&latency),
    }))
}

/// Returns the time of a Unix minute, as the time series write it.
pub fn minute_time(minute: i64) -> String {
    format_ms(minute.saturating_mul(MINUTE_MS))
}

/// The `buckets` array: per bucket, its start and its count per stage.
pub fn buckets_json(buckets: &[(i64, [i64; 5])]) -> Value {
    buckets
        .iter()
        .map(|(start, counts)| {
            let mut bucket = Map::new();
            bucket.insert("start".to_owned(), json!(minute_time(*start)));
            for (stage, count) in STAGES.iter().zip(counts) {
                bucket.insert((*stage).to_owned(), json!(count));
            }
            Value::Object(bucket)
        })
        .collect()
}

/// Returns the buckets of `width` minutes holding a minute that commits
/// after counters version `after` moved, at their current counts (zeros
/// for a bucket that emptied), oldest first; at most [`MAX_BUCKETS`], the
/// newest, and whether none was left out. What the campaign stream's
/// `timeseries` events carry; it reads the `(campaign_pk, version)` index
/// and the changed buckets' minute rows, never the campaign's history.
pub async fn changed_buckets(
    store: &Store,
    campaign_pk: i64,
    width: i64,
    after: i64,
) -> Result<(Vec<(i64, [i64; 5])>, bool), StoreError> {
    // Enough minutes to fill MAX_BUCKETS buckets, and one to tell whether
    // there were more.
    let limit = MAX_BUCKETS * width + 1;
    let minutes = store
        .campaign_minutes_changed(campaign_pk, after, limit)
        .await?;
    let mut complete = i64::try_from(minutes.len()).unwrap_or(i64::MAX) < limit;
    let mut starts: Vec<i64> = minutes
        .iter()
        .map(|minute| bucket_start(*minute, width))
        .collect();
    // The minutes come newest first, so their buckets do too.
    starts.dedup();
    if starts.len() > usize::try_from(MAX_BUCKETS).unwrap_or(usize::MAX) {
        starts.truncate(usize::try_from(MAX_BUCKETS).unwrap_or(usize::MAX));
        complete = false;
    }
    starts.reverse();
    // Consecutive buckets are read as one range of minute rows. Scattered
    // ones (a backfill of old timestamps) are read run by run, never as one
    // range over the history between them: at most MAX_RUNS runs, the
    // newest; beyond, the event says it is incomplete.
    const MAX_RUNS: usize = 64;
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for start in &starts {
        match runs.last_mut() {
            Some((_, end)) if *end == *start => *end = start + width,
            _ => runs.push((*start, start + width)),
        }
    }
    if runs.len() > MAX_RUNS {
        runs.drain(..runs.len() - MAX_RUNS);
        let first = runs.first().map_or(i64::MAX, |(from, _)| *from);
        starts.retain(|start| *start >= first);
        complete = false;
    }
    let mut read: Vec<(i64, [i64; 5])> = Vec::new();
    for (from, to) in runs {
        read.extend(store.campaign_buckets(campaign_pk, width, from, to).await?);
    }
    let buckets = starts
        .iter()
        .map(|start| {
            let counts = read
                .binary_search_by_key(start, |(bucket, _)| *bucket)
                .ok()
                .and_then(|at| read.get(at))
                .map_or([0; 5], |(_, counts)| *counts);
            (*start, counts)
        })
        .collect();
    Ok((buckets, complete))
}

/// The `latency` object: per measure, the messages measured and p50/p90 in
/// milliseconds (null without any).
pub fn latency_json(histogram: &[(i64, [i64; 2])]) -> Value {
    let measure = |index: usize| {
        let bins: Vec<(i64, i64)> = histogram
            .iter()
            .map(|(bin, counts)| (*bin, counts[index]))
            .collect();
        json!({
            "messages": bins.iter().map(|(_, count)| count).sum::<i64>(),
            "p50_ms": percentile(&bins, 50),
            "p90_ms": percentile(&bins, 90),
        })
    };
    json!({"to_delivered": measure(0), "to_read": measure(1)})
}
