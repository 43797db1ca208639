-- The read side (issue 11): campaign lists and message queries.

-- Campaign lists, newest activity first, paged by (updated_at, campaign_pk).
CREATE INDEX campaign_counters_by_activity ON campaign_counters (updated_at, campaign_pk);

-- Message queries. `seen` determines the current status, so every filter on
-- status, stages seen and stages not seen is a set of `seen` values; a page
-- merges one range of this index per value, each in id order (the rowid is
-- the index's last column). It replaces messages_by_campaign_status, which
-- no query used and which cost as much to keep up on every status change.
CREATE INDEX messages_by_campaign_seen ON messages (campaign_pk, seen);
DROP INDEX messages_by_campaign_status;

-- `?failure_code=`: only failed messages are in it, in id order per code.
CREATE INDEX messages_by_failure ON messages (campaign_pk, error_code)
    WHERE error_code IS NOT NULL;
