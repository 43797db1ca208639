-- The campaign stream's `include=timeseries` sends the buckets that changed
-- since the version a client has: each minute row records the counters
-- version of the last commit that moved it (0 for rows written before this
-- migration, which a client that connects afterwards gets in its snapshot).
ALTER TABLE campaign_minutes ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX campaign_minutes_by_version ON campaign_minutes (campaign_pk, version);
