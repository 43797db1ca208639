//! The PostgreSQL side of campaign lists and message queries (see
//! [`crate::store::listing`] for the paging rules).

use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row as _};

use crate::store::listing::{ActivityKey, CampaignQuery, ListedCampaign, MessageQuery, MessageRow};
use crate::store::types::{CampaignInfo, StoreError};

use super::PgStore;
use super::rows::{channel_of, counter_row, current_status_of, failure, status_set};

/// The columns a listed message is read with.
pub(crate) const MESSAGE_COLUMNS: &str = "id, channel, provider_message_id, recipient, seen, \
    status, sent_at, delivered_at, read_at, clicked_at, complained_at, failed_at, error_code, \
    error_title, updated_at";

impl PgStore {
    /// Returns campaigns after `query.after`, newest activity first.
    pub async fn list_campaigns(
        &self,
        query: &CampaignQuery,
    ) -> Result<Vec<ListedCampaign>, StoreError> {
        let mut sql = campaigns_sql("", query);
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(listed_campaign).collect()
    }

    /// Returns the ids of at most `wanted` candidate messages after
    /// `query.after_id`, ascending, from the index that serves the query.
    pub async fn message_candidates(
        &self,
        query: &MessageQuery,
        wanted: u32,
    ) -> Result<Vec<i64>, StoreError> {
        let mut sql = candidates_sql("", query, wanted);
        let ids = sql
            .build_query_scalar::<i64>()
            .fetch_all(&self.reader)
            .await?;
        Ok(ids)
    }

    /// Returns the messages among `ids` that pass every filter of `query`,
    /// ids ascending.
    pub async fn messages_by_ids(
        &self,
        query: &MessageQuery,
        ids: &[i64],
    ) -> Result<Vec<MessageRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = rows_sql("", query, ids);
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(message_row).collect()
    }

    /// Returns `EXPLAIN QUERY PLAN` of the statements a message page runs
    /// (candidates, then rows) and of the campaign list, each step as
    /// `<statement>: <detail>`.
    pub async fn explain_reads(
        &self,
        query: &MessageQuery,
        campaigns: &CampaignQuery,
    ) -> Result<Vec<String>, StoreError> {
        const PREFIX: &str = "EXPLAIN ";
        let wanted = crate::store::listing::candidates_wanted(query);
        let mut lines = Vec::new();
        let statements = [
            ("candidates", candidates_sql(PREFIX, query, wanted)),
            ("rows", rows_sql(PREFIX, query, &[1, 2, 3])),
            ("campaigns", campaigns_sql(PREFIX, campaigns)),
        ];
        for (name, mut sql) in statements {
            for row in sql.build().fetch_all(&self.reader).await? {
                let detail: String = row.try_get(0)?;
                lines.push(format!("{name}: {detail}"));
            }
        }
        Ok(lines)
    }
}

/// Builds the campaign list statement.
fn campaigns_sql<'a>(prefix: &str, query: &'a CampaignQuery) -> QueryBuilder<'a, Postgres> {
    let after = query.after.unwrap_or(ActivityKey {
        activity_ms: i64::MAX,
        campaign_pk: i64::MAX,
    });
    let mut sql = QueryBuilder::<Postgres>::new(prefix);
    sql.push(
        "SELECT c.tenant_id, c.campaign_id, c.created_at AS campaign_created_at, k.*
         FROM campaign_counters k JOIN campaigns c ON c.id = k.campaign_pk
         WHERE (k.updated_at, k.campaign_pk) < (",
    );
    sql.push_bind(after.activity_ms)
        .push(", ")
        .push_bind(after.campaign_pk)
        .push(")");
    if let Some(tenant_id) = &query.tenant_id {
        sql.push(" AND c.tenant_id = ")
            .push_bind(tenant_id.as_str());
    }
    if let Some(campaigns) = &query.campaigns {
        sql.push(" AND c.campaign_id IN (");
        let mut list = sql.separated(", ");
        list.push_bind("");
        for campaign in campaigns {
            list.push_bind(campaign.as_str());
        }
        sql.push(")");
    }
    sql.push(" ORDER BY k.updated_at DESC, k.campaign_pk DESC LIMIT ")
        .push_bind(i64::from(query.limit));
    sql
}

/// Builds the candidates statement: ids after `query.after_id`, ascending,
/// at most `wanted`. With a failure code, a range of `messages_by_failure`;
/// otherwise one range of `messages_by_campaign_seen` per allowed mask, each
/// read in id order and cut at `wanted` by its own limit (PostgreSQL 15
/// cannot walk `seen = ANY(…)` in id order, and left to itself may prefer
/// sorting every match), then the at most 16 × `wanted` ids merged.
fn candidates_sql<'a>(
    prefix: &str,
    query: &'a MessageQuery,
    wanted: u32,
) -> QueryBuilder<'a, Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new(prefix);
    if let Some(code) = &query.failure_code {
        sql.push("SELECT id FROM messages WHERE campaign_pk = ")
            .push_bind(query.campaign_pk)
            .push(" AND error_code = ")
            .push_bind(code.as_str())
            .push(" AND id > ")
            .push_bind(query.after_id)
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(wanted));
        return sql;
    }
    sql.push("SELECT id FROM (");
    for (index, mask) in query.masks.iter().enumerate() {
        if index > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("(SELECT id FROM messages WHERE campaign_pk = ")
            .push_bind(query.campaign_pk)
            .push(" AND seen = ")
            .push_bind(i64::from(*mask))
            .push(" AND id > ")
            .push_bind(query.after_id)
            .push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(wanted))
            .push(")");
    }
    sql.push(") AS candidates ORDER BY id LIMIT ")
        .push_bind(i64::from(wanted));
    sql
}

/// Builds the rows statement: the messages among `ids` that pass every
/// filter, ids ascending. Arrays keep its text independent of their sizes.
fn rows_sql<'a>(prefix: &str, query: &'a MessageQuery, ids: &[i64]) -> QueryBuilder<'a, Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new(prefix);
    sql.push("SELECT ")
        .push(MESSAGE_COLUMNS)
        .push(" FROM messages WHERE id = ANY(")
        .push_bind(ids.to_vec())
        .push(") AND campaign_pk = ")
        .push_bind(query.campaign_pk);
    if !query.all_masks() {
        let masks: Vec<i64> = query.masks.iter().map(|mask| i64::from(*mask)).collect();
        sql.push(" AND seen = ANY(").push_bind(masks).push(")");
    }
    if let Some(code) = &query.failure_code {
        sql.push(" AND error_code = ").push_bind(code.as_str());
    }
    if let Some(since) = query.updated_since_ms {
        sql.push(" AND updated_at >= ").push_bind(since);
    }
    // Only the page's rows are decoded, however many candidates matched.
    sql.push(" ORDER BY id LIMIT ")
        .push_bind(i64::from(query.limit));
    sql
}

fn listed_campaign(row: &PgRow) -> Result<ListedCampaign, StoreError> {
    let counters = counter_row(row)?;
    let tenant_id: String = row.try_get("tenant_id")?;
    let campaign_id: String = row.try_get("campaign_id")?;
    Ok(ListedCampaign {
        key: ActivityKey {
            activity_ms: counters.updated_at_ms,
            campaign_pk: counters.campaign_pk,
        },
        created_at_ms: row.try_get("campaign_created_at")?,
        counters: counters.named(&tenant_id, &campaign_id),
        info: CampaignInfo {
            campaign_pk: counters.campaign_pk,
            tenant_id,
            campaign_id,
        },
    })
}

fn message_row(row: &PgRow) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        message_pk: row.try_get("id")?,
        channel: channel_of(row, "channel")?,
        provider_message_id: row.try_get("provider_message_id")?,
        recipient: row.try_get("recipient")?,
        status: current_status_of(row, "status")?,
        set: status_set(row)?,
        failure: failure(row)?,
        updated_at_ms: row.try_get("updated_at")?,
    })
}
