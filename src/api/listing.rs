//! `GET /api/v1/campaigns` (the caller's campaigns, newest activity first)
//! and `GET /api/v1/campaigns/{id}/messages` (a campaign's messages,
//! filtered; a JSON page, or the whole selection streamed as NDJSON or CSV).
//!
//! Both are cursor-paged with opaque cursors. Parameters are checked
//! strictly: an unknown parameter or value is a 400 that says what is
//! accepted, never silently ignored (a misspelt filter must not export the
//! whole campaign).

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::access::resolve_campaign;
use crate::auth::{Caller, Claims};
use crate::clock::format_ms;
use crate::domain::{CampaignCounters, Channel, CurrentStatus, Failure, Status};
use crate::error::{ApiError, ErrorBody};
use crate::store::Store;
use crate::store::listing::{
    ActivityKey, CampaignQuery, MessagePage, MessageQuery, MessageRow, masks_matching,
};

/// Campaigns per page unless `?limit=` says otherwise, and the most.
const CAMPAIGNS_DEFAULT_LIMIT: u32 = 50;
const CAMPAIGNS_MAX_LIMIT: u32 = 500;
/// Messages per page unless `?limit=` says otherwise, and the most.
const MESSAGES_DEFAULT_LIMIT: u32 = 100;
const MESSAGES_MAX_LIMIT: u32 = 1_000;
/// Messages per chunk of an export: each chunk is one page read, encoded and
/// handed to the connection before the next is read.
const EXPORT_CHUNK: u32 = 1_000;
/// Most query parameters one request may carry, and the longest value.
const MAX_PARAMS: usize = 64;
const MAX_VALUE_LEN: usize = 256;

/// The query string as `(name, value)` pairs, bounded.
fn params(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::BadRequest("the query string does not parse".to_owned()))?
        .into_inner();
    if pairs.len() > MAX_PARAMS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PARAMS} query parameters"
        )));
    }
    if let Some((name, _)) = pairs.iter().find(|(_, value)| value.len() > MAX_VALUE_LEN) {
        return Err(ApiError::BadRequest(format!(
            "{name}: values are at most {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(pairs)
}

/// Fails with 400 for a parameter outside `known`.
fn only_known(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    match pairs
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()))
    {
        Some((name, _)) => Err(ApiError::BadRequest(format!(
            "unknown parameter {:?}; expected {}",
            crate::error::clip(name),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Returns the value of a parameter that may appear once.
fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs.iter().filter(|(each, _)| each == name);
    let first = values.next().map(|(_, value)| value.as_str());
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!("{name} may be given once")));
    }
    Ok(first)
}

/// Returns every value of a repeatable parameter, each parsed by `parse`.
fn repeated<T: PartialEq>(
    pairs: &[(String, String)],
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Vec<T>, ApiError> {
    let mut values = Vec::new();
    for (_, value) in pairs.iter().filter(|(each, _)| each == name) {
        let parsed = parse(value).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name}: unknown value {:?}; expected one of {expected}",
                crate::error::clip(value)
            ))
        })?;
        if !values.contains(&parsed) {
            values.push(parsed);
        }
    }
    Ok(values)
}

/// Parses `?limit=`: at least 1; values above `max` are lowered to it.
fn limit(pairs: &[(String, String)], default: u32, max: u32) -> Result<u32, ApiError> {
    match single(pairs, "limit")? {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(0) | Err(_) => Err(ApiError::BadRequest(
                "limit must be a positive integer".to_owned(),
            )),
            Ok(value) => Ok(u32::try_from(value.min(u64::from(max))).unwrap_or(max)),
        },
    }
}

/// Cursors are opaque to clients: a version tag and the position, in
/// base64url. `c1` is a campaign list position, `m1` a message id.
fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// Decodes a cursor of kind `tag` into its fields.
fn decode_cursor(cursor: &str, tag: &str) -> Result<Vec<i64>, ApiError> {
    let invalid = || ApiError::BadRequest("invalid cursor: pass next_cursor unchanged".to_owned());
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split(':');
    if parts.next() != Some(tag) {
        return Err(invalid());
    }
    parts
        .map(|part| part.parse::<i64>().map_err(|_| invalid()))
        .collect()
}

fn campaign_cursor(key: ActivityKey) -> String {
    encode_cursor(&format!("c1:{}:{}", key.activity_ms, key.campaign_pk))
}

fn message_cursor(after_id: i64) -> String {
    encode_cursor(&format!("m1:{after_id}"))
}

/// One campaign of a list: its counters (the metrics JSON) and creation time.
#[derive(Serialize, ToSchema)]
struct CampaignItem {
    #[serde(flatten)]
    counters: CampaignCounters,
    #[schema(format = DateTime)]
    created_at: String,
}

/// A page of campaigns, newest activity first.
#[derive(Serialize, ToSchema)]
struct CampaignList {
    campaigns: Vec<CampaignItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// The query of `GET /api/v1/campaigns`, for the OpenAPI document only: the
/// handler reads the query string itself, strictly (see [`params`]), so an
/// unknown parameter is a 400 rather than ignored.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Never built: it describes the query, `list_campaigns` parses it.
struct CampaignListParams {
    /// `next_cursor` of the previous page, unchanged.
    cursor: Option<String>,
    /// Page size: 50 by default, at least 1; above 500 is lowered to 500.
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// The admin: only this tenant's campaigns. A tenant token: its own
    /// tenant only (another one is a 403).
    tenant_id: Option<String>,
}

/// `GET /api/v1/campaigns`: the caller's campaigns with their counters,
/// newest activity first.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    tag = "api",
    params(CampaignListParams),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "A page of the caller's campaigns (the token's tenant and campaigns; every tenant's for the admin) with their counters, newest activity first", body = CampaignList),
        (status = 400, description = "An unknown parameter, a value that does not parse, or a cursor not passed back unchanged", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "A tenant token asking for another tenant's `tenant_id`", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
///
/// Order and cursor: by `(last activity, campaign key)`, descending; a
/// cursor is the position of the last campaign of its page, and the next
/// page holds what comes strictly after it. Activity only rises, so while
/// writes continue: no campaign appears twice; every campaign whose
/// activity did not change since paging began appears exactly once; a
/// campaign that became active meanwhile moved ahead of the cursor and is
/// not listed again (it is on a fresh first page).
pub async fn list_campaigns(
    req: HttpRequest,
    store: web::Data<Store>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let pairs = params(&req)?;
    only_known(&pairs, &["cursor", "limit", "tenant_id", "access_token"])?;
    let limit = limit(&pairs, CAMPAIGNS_DEFAULT_LIMIT, CAMPAIGNS_MAX_LIMIT)?;
    let after = single(&pairs, "cursor")?
        .map(|cursor| match decode_cursor(cursor, "c1")?.as_slice() {
            [activity_ms, campaign_pk] => Ok(ActivityKey {
                activity_ms: *activity_ms,
                campaign_pk: *campaign_pk,
            }),
            _ => Err(ApiError::BadRequest("invalid cursor".to_owned())),
        })
        .transpose()?;
    let asked_tenant = single(&pairs, "tenant_id")?;
    let (tenant_id, campaigns) = match &caller {
        Caller::Admin => (asked_tenant.map(str::to_owned), None),
        Caller::Tenant(Claims { sub, campaigns, .. }) => {
            if let Some(asked) = asked_tenant {
                caller.require_tenant(asked)?;
            }
            (Some(sub.clone()), campaigns.clone())
        }
    };
    let listed = store
        .list_campaigns(&CampaignQuery {
            tenant_id,
            campaigns,
            after,
            limit,
        })
        .await?;
    let next_cursor = (listed.len() >= usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| listed.last().map(|last| campaign_cursor(last.key)))
        .flatten();
    let campaigns = listed
        .into_iter()
        .map(|each| CampaignItem {
            counters: each.counters,
            created_at: format_ms(each.created_at_ms),
        })
        .collect();
    Ok(HttpResponse::Ok().json(CampaignList {
        campaigns,
        next_cursor,
    }))
}

/// How a message query answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One page, with a cursor.
    Json,
    /// The whole selection, one JSON object a line.
    Ndjson,
    /// The whole selection, CSV with a header line.
    Csv,
}

/// `?format=` when given (a download link cannot set `Accept`), else the
/// first of NDJSON or CSV that `Accept` names, else a JSON page.
fn format_of(req: &HttpRequest, pairs: &[(String, String)]) -> Result<Format, ApiError> {
    if let Some(format) = single(pairs, "format")? {
        return match format {
            "json" => Ok(Format::Json),
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            _ => Err(ApiError::BadRequest(
                "format: expected one of json, ndjson, csv".to_owned(),
            )),
        };
    }
    let accept = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|item| {
            item.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .find_map(|media| match media.as_str() {
            "application/x-ndjson" => Some(Format::Ndjson),
            "text/csv" => Some(Format::Csv),
            _ => None,
        });
    Ok(accept.unwrap_or(Format::Json))
}

/// Parses `?updated_since=` (RFC 3339) into Unix milliseconds. A `+` of an
/// offset arrives as a space when the client did not encode it as `%2B`;
/// it is read as the `+` it was.
fn parse_since(text: &str) -> Result<i64, ApiError> {
    let text = text.replace(' ', "+");
    let at = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::BadRequest(
                "updated_since: expected an RFC 3339 time such as 2026-11-30T12:00:00Z".to_owned(),
            )
        })?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| ApiError::BadRequest("updated_since: out of range".to_owned()))
}

/// One status a message reached, with its first provider time (none for a
/// status only implied by a later one).
#[derive(Serialize, ToSchema)]
struct SeenItem {
    status: Status,
    #[schema(format = DateTime)]
    first_at: Option<String>,
}

/// One message of a query (a JSON page's item, and an NDJSON line).
#[derive(Serialize, ToSchema)]
struct MessageItem {
    provider_message_id: String,
    channel: Channel,
    recipient: Option<String>,
    status: CurrentStatus,
    seen: Vec<SeenItem>,
    failure: Option<Failure>,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<MessageRow> for MessageItem {
    fn from(row: MessageRow) -> Self {
        let set = row.set;
        MessageItem {
            provider_message_id: row.provider_message_id,
            channel: row.channel,
            recipient: row.recipient,
            status: row.status,
            seen: Status::ALL
                .into_iter()
                .filter(|status| set.contains(*status))
                .map(|status| SeenItem {
                    status,
                    first_at: set.first_seen(status).map(format_ms),
                })
                .collect(),
            failure: row.failure,
            updated_at: format_ms(row.updated_at_ms),
        }
    }
}

/// A page of a campaign's messages, in id order.
#[derive(Serialize, ToSchema)]
struct MessageList {
    messages: Vec<MessageItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// `?explain=true` (admin only): the plans the store would run.
#[derive(Serialize, ToSchema)]
struct QueryPlan {
    /// The backend's plan lines, for the message query then the campaign list.
    plan: Vec<String>,
}

/// The JSON answers of `GET /api/v1/campaigns/{id}/messages`: a page, or
/// with `?explain=true` the query plan.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Never built: it describes the answer's two shapes.
enum MessagesAnswer {
    Page(MessageList),
    Plan(QueryPlan),
}

/// The query of `GET /api/v1/campaigns/{id}/messages`, for the OpenAPI
/// document only: the handler reads the query string itself, strictly (see
/// [`params`]), so an unknown parameter or value is a 400 rather than
/// ignored. Filters combine with AND; values of one repeated filter with OR.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Never built: it describes the query, `list_messages` parses it.
struct MessageParams {
    /// Current status is one of these (repeatable).
    #[param(inline, explode, style = Form)]
    status: Option<Vec<CurrentStatus>>,
    /// Reached every one of these stages (repeatable).
    #[param(inline, explode, style = Form)]
    seen: Option<Vec<Status>>,
    /// Reached none of these stages (repeatable).
    #[param(inline, explode, style = Form)]
    not_seen: Option<Vec<Status>>,
    /// The provider's failure code, exactly (not empty).
    #[param(min_length = 1)]
    failure_code: Option<String>,
    /// Updated at or after this time (RFC 3339).
    #[param(format = DateTime)]
    updated_since: Option<String>,
    /// `next_cursor` of the previous page, unchanged.
    cursor: Option<String>,
    /// JSON page size: 100 by default, at least 1; above 1000 is lowered to
    /// 1000. Not with an export (400).
    #[param(minimum = 1)]
    limit: Option<u64>,
    /// `json` (a page), or `ndjson` / `csv` (the whole selection streamed);
    /// without it, `Accept: application/x-ndjson` or `text/csv` chooses.
    #[param(inline)]
    format: Option<ExportFormat>,
    /// Whose campaign: defaults to the token's tenant.
    tenant_id: Option<String>,
    /// Admin only: the query plans instead of the messages.
    explain: Option<bool>,
}

/// `?format=` values.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Never built: `format_of` reads the value.
enum ExportFormat {
    Json,
    Ndjson,
    Csv,
}

/// The CSV header; each record has these fields in this order.
const CSV_HEADER: [&str; 14] = [
    "provider_message_id",
    "channel",
    "recipient",
    "status",
    "seen",
    "sent_at",
    "delivered_at",
    "read_at",
    "clicked_at",
    "complained_at",
    "failed_at",
    "failure_code",
    "failure_title",
    "updated_at",
];

/// Appends rows to `out` in `format` (NDJSON or CSV).
fn encode_rows(
    format: Format,
    rows: Vec<MessageRow>,
    out: &mut Vec<u8>,
) -> Result<(), ExportError> {
    match format {
        Format::Csv => {
            let mut writer = csv::WriterBuilder::new().from_writer(std::mem::take(out));
            for row in rows {
                let set = row.set;
                let seen: Vec<&str> = Status::ALL
                    .into_iter()
                    .filter(|status| set.contains(*status))
                    .map(Status::as_str)
                    .collect();
                let first = set
                    .first_seen_ms()
                    .map(|ms| ms.map(format_ms).unwrap_or_default());
                let (code, title) = row
                    .failure
                    .map(|failure| (failure.code, failure.title))
                    .unwrap_or_default();
                let [sent, delivered, read, clicked, complained, failed] = first;
                writer.write_record([
                    row.provider_message_id.as_str(),
                    row.channel.as_str(),
                    row.recipient.as_deref().unwrap_or_default(),
                    row.status.as_str(),
                    seen.join(";").as_str(),
                    &sent,
                    &delivered,
                    &read,
                    &clicked,
                    &complained,
                    &failed,
                    &code,
                    &title,
                    &format_ms(row.updated_at_ms),
                ])?;
            }
            *out = writer
                .into_inner()
                .map_err(|error| ExportError::Encode(error.to_string()))?;
        }
        Format::Ndjson | Format::Json => {
            for row in rows {
                serde_json::to_writer(&mut *out, &MessageItem::from(row))
                    .map_err(|error| ExportError::Encode(error.to_string()))?;
                out.push(b'\n');
            }
        }
    }
    Ok(())
}

/// Why an export stopped before its end. The response is then cut off
/// (the chunked body never gets its last chunk), so the client sees an
/// incomplete body rather than a short file that looks whole.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("the store failed during an export")]
    Store(#[from] crate::store::StoreError),
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
}

/// Where an export is.
struct Export {
    store: Store,
    query: MessageQuery,
    format: Format,
    /// The header is still to be sent (CSV).
    header: bool,
    done: bool,
}

impl Export {
    /// Returns the next non-empty chunk, `None` at the end. Pages are read
    /// one at a time and only when the connection wants more, so memory
    /// stays one page whatever the selection's size.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, ExportError>> {
        let mut out = Vec::new();
        if self.header {
            self.header = false;
            let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
            if let Err(error) = writer.write_record(CSV_HEADER) {
                self.done = true;
                return Some(Err(error.into()));
            }
            match writer.into_inner() {
                Ok(bytes) => out = bytes,
                Err(error) => {
                    self.done = true;
                    return Some(Err(ExportError::Encode(error.to_string())));
                }
            }
        }
        while !self.done && out.is_empty() {
            let page: MessagePage = match self.store.message_page(&self.query).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(error = %error, "message export failed");
                    self.done = true;
                    return Some(Err(error.into()));
                }
            };
            match page.next_after {
                Some(after) => self.query.after_id = after,
                None => self.done = true,
            }
            if let Err(error) = encode_rows(self.format, page.messages, &mut out) {
                tracing::error!(error = %error, "message export failed");
                self.done = true;
                return Some(Err(error));
            }
        }
        (!out.is_empty()).then(|| Ok(Bytes::from(out)))
    }
}

/// A file name for a download: the campaign id with anything but
/// `[A-Za-z0-9._-]` replaced.
fn download_name(campaign_id: &str, extension: &str) -> String {
    let safe: String = campaign_id
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-messages.{extension}")
}

/// `GET /api/v1/campaigns/{id}/messages`: a campaign's messages in id
/// order, filtered; a JSON page, or with `Accept: application/x-ndjson` or
/// `text/csv` (or `?format=`) the whole selection, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{campaign_id}/messages",
    tag = "api",
    params(
        ("campaign_id" = String, Path, description = "The campaign, in the token's tenant or `tenant_id`", example = "spring-sale"),
        MessageParams,
    ),
    security(("tenant_jwt" = []), ("admin_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "A JSON page of the campaign's messages in id order (the query plan with `?explain=true`); with `?format=ndjson` or `Accept: application/x-ndjson` the whole selection streamed as one `MessageItem` a line; with `?format=csv` or `Accept: text/csv` as CSV with a header line (`Content-Disposition: attachment`). A stream that fails midway is cut off before its last chunk.",
            content(
                (MessagesAnswer = "application/json"),
                (String = "application/x-ndjson"),
                (String = "text/csv"),
            ),
            headers(("Content-Disposition" = String, description = "Exports only: `attachment; filename=\"{campaign}-messages.{ndjson|csv}\"`")),
        ),
        (status = 400, description = "An unknown parameter, a value that does not parse, `limit` with an export, or a campaign name several tenants use and no `tenant_id`", body = ErrorBody),
        (status = 401, description = crate::openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = "Another tenant's `tenant_id`, a campaign the token does not cover, or `explain` without the admin token", body = ErrorBody),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = crate::openapi::UNAVAILABLE, body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds"))),
    )
)]
pub async fn list_messages(
    req: HttpRequest,
    store: web::Data<Store>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pairs = params(&req)?;
    only_known(
        &pairs,
        &[
            "status",
            "seen",
            "not_seen",
            "failure_code",
            "updated_since",
            "cursor",
            "limit",
            "format",
            "tenant_id",
            "explain",
            "access_token",
        ],
    )?;
    let statuses = repeated(
        &pairs,
        "status",
        CurrentStatus::parse,
        "pending, sent, delivered, read, failed",
    )?;
    let stages = "sent, delivered, read, clicked, complained, failed";
    let seen = repeated(&pairs, "seen", Status::parse, stages)?;
    let not_seen = repeated(&pairs, "not_seen", Status::parse, stages)?;
    let failure_code = single(&pairs, "failure_code")?.map(str::to_owned);
    if failure_code.as_deref() == Some("") {
        return Err(ApiError::BadRequest(
            "failure_code must not be empty".to_owned(),
        ));
    }
    let updated_since_ms = single(&pairs, "updated_since")?
        .map(parse_since)
        .transpose()?;
    let after_id = match single(&pairs, "cursor")? {
        None => 0,
        Some(cursor) => match decode_cursor(cursor, "m1")?.as_slice() {
            [after_id] => *after_id,
            _ => return Err(ApiError::BadRequest("invalid cursor".to_owned())),
        },
    };
    let format = format_of(&req, &pairs)?;
    if format != Format::Json && single(&pairs, "limit")?.is_some() {
        return Err(ApiError::BadRequest(
            "limit applies to JSON pages; an export streams the whole selection".to_owned(),
        ));
    }
    let limit = limit(&pairs, MESSAGES_DEFAULT_LIMIT, MESSAGES_MAX_LIMIT)?;
    let explain = match single(&pairs, "explain")? {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "explain: expected true or false".to_owned(),
            ));
        }
    };
    if explain {
        caller.require_admin()?;
    }
    let campaign = resolve_campaign(&store, &caller, single(&pairs, "tenant_id")?, &path).await?;
    let masks = masks_matching(&statuses, &seen, &not_seen);
    let query = MessageQuery {
        campaign_pk: campaign.campaign_pk,
        masks,
        failure_code,
        updated_since_ms,
        after_id,
        limit: if format == Format::Json {
            limit
        } else {
            EXPORT_CHUNK
        },
    };
    if explain {
        let plan = store
            .explain_reads(
                &query,
                &CampaignQuery {
                    tenant_id: Some(campaign.tenant_id.clone()),
                    campaigns: None,
                    after: None,
                    limit: CAMPAIGNS_DEFAULT_LIMIT,
                },
            )
            .await?;
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "plan": plan })));
    }
    // No mask satisfies the filters (e.g. seen=read&not_seen=delivered):
    // nothing can match, and nothing is read.
    let nothing = query.masks.is_empty();
    match format {
        Format::Json => {
            let page = if nothing {
                MessagePage::default()
            } else {
                store.message_page(&query).await?
            };
            Ok(HttpResponse::Ok().json(MessageList {
                messages: page.messages.into_iter().map(MessageItem::from).collect(),
                next_cursor: page.next_after.map(message_cursor),
            }))
        }
        Format::Ndjson | Format::Csv => {
            let (content_type, extension) = match format {
                Format::Csv => ("text/csv; charset=utf-8", "csv"),
                _ => ("application/x-ndjson", "ndjson"),
            };
            let export = Export {
                store: store.get_ref().clone(),
                query,
                format,
                header: format == Format::Csv,
                done: nothing,
            };
            let body = futures_util::stream::unfold(export, |mut export| async move {
                export.next_chunk().await.map(|chunk| (chunk, export))
            });
            Ok(HttpResponse::Ok()
                .content_type(content_type)
                .insert_header((
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{}\"",
                        download_name(&campaign.campaign_id, extension)
                    ),
                ))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .streaming(body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_kinds() {
        let key = ActivityKey {
            activity_ms: 1_700_000_000_000,
            campaign_pk: 42,
        };
        let cursor = campaign_cursor(key);
        assert_eq!(
            decode_cursor(&cursor, "c1").unwrap(),
            vec![1_700_000_000_000, 42]
        );
        assert!(decode_cursor(&cursor, "m1").is_err());
        assert_eq!(decode_cursor(&message_cursor(7), "m1").unwrap(), vec![7]);
        assert!(decode_cursor("not base64!", "m1").is_err());
        assert!(decode_cursor(&encode_cursor("m1:x"), "m1").is_err());
    }

    #[test]
    fn since_reads_rfc3339_with_an_unencoded_plus() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1_000);
        assert_eq!(parse_since("1970-01-01T01:00:01 01:00").unwrap(), 1_000);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let row = MessageRow {
            message_pk: 1,
            channel: Channel::Whatsapp,
            provider_message_id: "wamid.\"1\",x".to_owned(),
            recipient: Some("line\nbreak".to_owned()),
            status: CurrentStatus::Failed,
            set: crate::domain::StatusSet::EMPTY.with(Status::Failed, 1_000),
            failure: Some(Failure {
                code: "131026".to_owned(),
                title: "Message undeliverable, \"really\"".to_owned(),
            }),
            updated_at_ms: 2_000,
        };
        let mut out = Vec::new();
        encode_rows(Format::Csv, vec![row], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\"wamid.\"\"1\"\",x\",whatsapp,\"line\nbreak\",failed,failed,"));
        assert!(text.contains("\"Message undeliverable, \"\"really\"\"\""));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "wamid.\"1\",x");
        assert_eq!(&record[2], "line\nbreak");
        assert_eq!(record.len(), CSV_HEADER.len());
    }

    #[test]
    fn download_names_are_tame() {
        assert_eq!(
            download_name("spring \"sale\"/../x", "csv"),
            "spring__sale__.._x-messages.csv"
        );
    }
}
