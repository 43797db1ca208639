//! `GET /api/v1/campaigns/{id}/metrics`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::access::resolve_campaign;
use crate::auth::Caller;
use crate::domain::CampaignCounters;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::Store;

/// `?tenant_id=`: whose campaign; defaults to the token's tenant (the admin
/// may omit it when the campaign name is unique).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Whose campaign: defaults to the token's tenant.
    tenant_id: Option<String>,
}

/// Returns a campaign's live counters.
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
        (status = 200, description = "The campaign's counters", body = CampaignCounters),
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
    Ok(HttpResponse::Ok().json(counters))
}
