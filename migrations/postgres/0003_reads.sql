-- The read side (issue 11): campaign lists and message queries; see
-- migrations/sqlite/0004_reads.sql.

CREATE INDEX campaign_counters_by_activity ON campaign_counters (updated_at, campaign_pk);

CREATE INDEX messages_by_campaign_seen ON messages (campaign_pk, seen, id);
DROP INDEX messages_by_campaign_status;

CREATE INDEX messages_by_failure ON messages (campaign_pk, error_code, id)
    WHERE error_code IS NOT NULL;
