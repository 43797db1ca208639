//! Reads of a campaign's analytics rows (`campaign_minutes`,
//! `campaign_latency`, `campaign_reasons`, `campaign_pricing`): each reads
//! the campaign's own small table by its primary key, never `messages`.

use sqlx::Row as _;

use crate::domain::analytics::Reason;
use crate::store::types::StoreError;

use super::SqliteStore;

impl SqliteStore {
    /// Returns the campaign's first and last minute with analytics rows.
    pub async fn campaign_minute_range(
        &self,
        campaign_pk: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(minute) AS first, MAX(minute) AS last FROM campaign_minutes
             WHERE campaign_pk = ?
               AND (sent <> 0 OR delivered <> 0 OR read <> 0 OR clicked <> 0 OR failed <> 0)",
        )
        .bind(campaign_pk)
        .fetch_one(&self.reader)
        .await?;
        let first: Option<i64> = row.try_get("first")?;
        let last: Option<i64> = row.try_get("last")?;
        Ok(first.zip(last))
    }

    /// Returns the minutes (newest first, at most `limit`) whose rows
    /// commits after counters version `after` moved, through the
    /// `(campaign_pk, version)` index.
    pub async fn campaign_minutes_changed(
        &self,
        campaign_pk: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let minutes = sqlx::query_scalar(
            "SELECT minute FROM campaign_minutes WHERE campaign_pk = ?1 AND version > ?2
             ORDER BY minute DESC LIMIT ?3",
        )
        .bind(campaign_pk)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        Ok(minutes)
    }

    /// Returns the per-stage counts of the buckets of `width` minutes that
    /// start in `[from, to)` (minutes), summed from the minute rows, in
    /// order; buckets with no row are left out.
    pub async fn campaign_buckets(
        &self,
        campaign_pk: i64,
        width: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, [i64; 5])>, StoreError> {
        let rows = sqlx::query(
            "SELECT minute - (((minute % ?2) + ?2) % ?2) AS bucket, SUM(sent) AS sent,
                    SUM(delivered) AS delivered, SUM(read) AS read, SUM(clicked) AS clicked,
                    SUM(failed) AS failed
             FROM campaign_minutes WHERE campaign_pk = ?1 AND minute >= ?3 AND minute < ?4
             GROUP BY bucket
             HAVING SUM(sent) <> 0 OR SUM(delivered) <> 0 OR SUM(read) <> 0
                 OR SUM(clicked) <> 0 OR SUM(failed) <> 0
             ORDER BY bucket",
        )
        .bind(campaign_pk)
        .bind(width)
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("bucket")?,
                    [
                        row.try_get("sent")?,
                        row.try_get("delivered")?,
                        row.try_get("read")?,
                        row.try_get("clicked")?,
                        row.try_get("failed")?,
                    ],
                ))
            })
            .collect()
    }

    /// Returns the campaign's latency histogram: `(bin, [to_delivered, to_read])`.
    pub async fn campaign_latency(
        &self,
        campaign_pk: i64,
    ) -> Result<Vec<(i64, [i64; 2])>, StoreError> {
        let rows = sqlx::query(
            "SELECT bin, to_delivered, to_read FROM campaign_latency WHERE campaign_pk = ?
             ORDER BY bin",
        )
        .bind(campaign_pk)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("bin")?,
                    [row.try_get("to_delivered")?, row.try_get("to_read")?],
                ))
            })
            .collect()
    }

    /// Returns the campaign's `limit` most frequent failure and complaint
    /// reasons, most frequent first, and the count of messages under the
    /// others.
    pub async fn campaign_reasons(
        &self,
        campaign_pk: i64,
        limit: u32,
    ) -> Result<(Vec<(Reason, i64)>, i64), StoreError> {
        let rows = sqlx::query(
            "SELECT kind, code, title, messages FROM campaign_reasons
             WHERE campaign_pk = ? AND messages > 0
             ORDER BY messages DESC, kind, code, title",
        )
        .bind(campaign_pk)
        .fetch_all(&self.reader)
        .await?;
        let mut top = Vec::new();
        let mut others = 0;
        for row in &rows {
            let count: i64 = row.try_get("messages")?;
            if top.len() < limit as usize {
                let reason = Reason {
                    kind: row.try_get("kind")?,
                    code: row.try_get("code")?,
                    title: row.try_get("title")?,
                };
                top.push((reason, count));
            } else {
                others += count;
            }
        }
        Ok((top, others))
    }

    /// Returns the campaign's priced messages: `(category, billable, messages)`.
    pub async fn campaign_pricing(
        &self,
        campaign_pk: i64,
    ) -> Result<Vec<(String, bool, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT category, billable, messages FROM campaign_pricing
             WHERE campaign_pk = ? AND messages > 0 ORDER BY category, billable",
        )
        .bind(campaign_pk)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("category")?,
                    row.try_get("billable")?,
                    row.try_get("messages")?,
                ))
            })
            .collect()
    }
}
