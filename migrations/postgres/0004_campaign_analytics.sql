-- Campaign analytics (issue 11, items 3 and 4), kept by deltas in the same
-- transaction as the message rows they count, like the counters: each row
-- always equals a recount over `messages`.

-- What a message keeps for them beside its failure: the feedback type of
-- its earliest complaint that gave one, and the WhatsApp pricing of its
-- earliest status that carried one (`pricing_at`: that status's time).
ALTER TABLE messages ADD COLUMN complaint_type TEXT;
ALTER TABLE messages ADD COLUMN pricing_category TEXT;
ALTER TABLE messages ADD COLUMN pricing_billable BOOLEAN;
ALTER TABLE messages ADD COLUMN pricing_at BIGINT;

-- Messages registered before this migration had statuses nobody counted
-- into these tables: they stay out of them (marked here; new rows get
-- NULL), so no later change of theirs moves a row it was never counted in.
ALTER TABLE messages ADD COLUMN before_analytics BOOLEAN;
UPDATE messages SET before_analytics = true;

-- The funnel over time: per minute of provider time (Unix minutes), the
-- messages that first reached each stage then. Read summed into 5-minute
-- and hourly buckets.
CREATE TABLE campaign_minutes (
    campaign_pk  BIGINT NOT NULL REFERENCES campaigns (id),
    minute       BIGINT NOT NULL,
    sent         BIGINT NOT NULL DEFAULT 0,
    delivered    BIGINT NOT NULL DEFAULT 0,
    read         BIGINT NOT NULL DEFAULT 0,
    clicked      BIGINT NOT NULL DEFAULT 0,
    failed       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_pk, minute)
);

-- Time from first `sent` to delivered and to read: messages per
-- log-spaced latency bin (src/domain/analytics.rs, `latency_bin`).
CREATE TABLE campaign_latency (
    campaign_pk   BIGINT NOT NULL REFERENCES campaigns (id),
    bin           BIGINT NOT NULL,
    to_delivered  BIGINT NOT NULL DEFAULT 0,
    to_read       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_pk, bin)
);

-- Messages per failure or complaint reason.
CREATE TABLE campaign_reasons (
    campaign_pk  BIGINT NOT NULL REFERENCES campaigns (id),
    kind         TEXT NOT NULL,
    code         TEXT NOT NULL,
    title        TEXT NOT NULL,
    messages     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_pk, kind, code, title)
);

-- Messages per WhatsApp pricing category, billable or free.
CREATE TABLE campaign_pricing (
    campaign_pk  BIGINT NOT NULL REFERENCES campaigns (id),
    category     TEXT NOT NULL,
    billable     BOOLEAN NOT NULL,
    messages     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_pk, category, billable)
);
