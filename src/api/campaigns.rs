//! `GET /api/v1/campaigns/{id}/metrics`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::{CampaignInfo, Store};

/// `?tenant_id=`: whose campaign; defaults to the token's tenant (the admin
/// may omit it when the campaign name is unique).
#[derive(Deserialize)]
pub struct TenantQuery {
    tenant_id: Option<String>,
}

/// Returns the campaign `campaign_id` the caller may read: 403 for another
/// tenant's or a campaign outside the token's list, 404 when there is none.
pub async fn resolve_campaign(
    store: &Store,
    caller: &Caller,
    tenant_id: Option<&str>,
    campaign_id: &str,
) -> Result<CampaignInfo, ApiError> {
    let tenant_id = tenant_id.or(caller.tenant());
    if let Some(tenant_id) = tenant_id {
        caller.require_campaign(tenant_id, campaign_id)?;
    }
    let mut found = store.find_campaigns(tenant_id, campaign_id).await?;
    match found.len() {
        0 => Err(ApiError::NotFound("no such campaign")),
        1 => Ok(found.remove(0)),
        _ => Err(ApiError::BadRequest(
            "several tenants have a campaign of this name: pass ?tenant_id=".to_owned(),
        )),
    }
}

/// Returns a campaign's live counters.
pub async fn metrics(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<TenantQuery>,
) -> Result<HttpResponse, ApiError> {
    let campaign = resolve_campaign(
        state.hub.store(),
        &caller,
        query.tenant_id.as_deref(),
        &path,
    )
    .await?;
    let counters = state.hub.counters(campaign.campaign_pk).await?;
    Ok(HttpResponse::Ok().json(counters))
}
