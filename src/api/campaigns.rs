//! `GET /api/v1/campaigns/{id}/metrics`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::access::resolve_campaign;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::Store;

/// `?tenant_id=`: whose campaign; defaults to the token's tenant (the admin
/// may omit it when the campaign name is unique).
#[derive(Deserialize)]
pub struct TenantQuery {
    tenant_id: Option<String>,
}

/// Returns a campaign's live counters.
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
