//! What a caller may read: campaigns looked up within the caller's tenant,
//! and another tenant's things answering like unknown ones.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::{CampaignInfo, Store};

/// Returns the campaign `campaign_id` the caller may read: looked up in
/// `tenant_id`, else in the caller's tenant (the admin may omit it when the
/// name is unique). 403 for a `tenant_id` of another tenant or a campaign
/// outside a restricted token's list, 404 when there is none.
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
