-- statushub schema for PostgreSQL: the SQLite schema (migrations/sqlite)
-- with PostgreSQL types, plus what several instances over one database
-- need: each event row and each outbox row carries the id of the
-- transaction that wrote it (`xact`), so followers read in commit-safe
-- order (see src/store/postgres/follow.rs). All times are Unix
-- milliseconds (BIGINT).

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE campaigns (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    campaign_id  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (tenant_id, campaign_id)
);
CREATE INDEX campaigns_by_name ON campaigns (campaign_id);

-- Live counters, changed by deltas in the same transaction as the message
-- rows they count, so they always equal a COUNT over messages.
-- `pruned_version`: the highest version among the campaign's pruned events.
CREATE TABLE campaign_counters (
    campaign_pk     BIGINT PRIMARY KEY REFERENCES campaigns (id),
    version         BIGINT NOT NULL DEFAULT 0,
    total           BIGINT NOT NULL DEFAULT 0,
    sent            BIGINT NOT NULL DEFAULT 0,
    delivered       BIGINT NOT NULL DEFAULT 0,
    read            BIGINT NOT NULL DEFAULT 0,
    clicked         BIGINT NOT NULL DEFAULT 0,
    complained      BIGINT NOT NULL DEFAULT 0,
    now_pending     BIGINT NOT NULL DEFAULT 0,
    now_sent        BIGINT NOT NULL DEFAULT 0,
    now_delivered   BIGINT NOT NULL DEFAULT 0,
    now_read        BIGINT NOT NULL DEFAULT 0,
    now_failed      BIGINT NOT NULL DEFAULT 0,
    pruned_version  BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL
);

-- One row per registered message; see migrations/sqlite/0001_init.sql.
CREATE TABLE messages (
    id                   BIGSERIAL PRIMARY KEY,
    campaign_pk          BIGINT NOT NULL REFERENCES campaigns (id),
    channel              TEXT NOT NULL,
    provider_message_id  TEXT NOT NULL,
    recipient            TEXT,
    seen                 BIGINT NOT NULL DEFAULT 0,
    status               TEXT NOT NULL DEFAULT 'pending',
    sent_at              BIGINT,
    delivered_at         BIGINT,
    read_at              BIGINT,
    clicked_at           BIGINT,
    complained_at        BIGINT,
    failed_at            BIGINT,
    error_code           TEXT,
    error_title          TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    UNIQUE (channel, provider_message_id)
);
CREATE INDEX messages_by_campaign_status ON messages (campaign_pk, status);

-- One row per distinct provider notification that reached a known message.
-- `xact`: the writing transaction's id (pg_current_xact_id), the first
-- part of the position tenant streams follow; event ids alone are not in
-- commit order.
CREATE TABLE status_events (
    id               BIGSERIAL PRIMARY KEY,
    xact             BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    idempotency_key  TEXT NOT NULL UNIQUE,
    message_pk       BIGINT NOT NULL REFERENCES messages (id),
    campaign_pk      BIGINT NOT NULL REFERENCES campaigns (id),
    event            TEXT NOT NULL,
    status           TEXT,
    changed          BOOLEAN NOT NULL,
    campaign_version BIGINT,
    message_status   TEXT NOT NULL,
    provider_ts      BIGINT NOT NULL,
    details          TEXT,
    received_at      BIGINT NOT NULL
);
CREATE INDEX status_events_by_message ON status_events (message_pk, id);
CREATE INDEX status_events_by_campaign ON status_events (campaign_pk, campaign_version)
    WHERE campaign_version IS NOT NULL;
CREATE INDEX status_events_by_position ON status_events (xact, id)
    WHERE campaign_version IS NOT NULL;

-- Statuses for message ids nobody registered yet.
CREATE TABLE unmatched_statuses (
    id                   BIGSERIAL PRIMARY KEY,
    idempotency_key      TEXT NOT NULL UNIQUE,
    channel              TEXT NOT NULL,
    provider_message_id  TEXT NOT NULL,
    status_update        TEXT NOT NULL,
    received_at          BIGINT NOT NULL
);
CREATE INDEX unmatched_by_message ON unmatched_statuses (channel, provider_message_id);
CREATE INDEX unmatched_by_age ON unmatched_statuses (received_at);

-- Correctly signed payloads statushub could not interpret, kept verbatim.
CREATE TABLE dead_letters (
    id            BIGSERIAL PRIMARY KEY,
    channel       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    content_type  TEXT,
    body          BYTEA NOT NULL,
    received_at   BIGINT NOT NULL
);

-- Store-wide marks (`events_pruned_through`).
CREATE TABLE store_marks (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);

-- The outbox: one row per campaign whose counters a commit changed, with
-- the counters right after it. Every instance follows it (after a NOTIFY,
-- after a reconnect, and on a periodic poll) and hands each campaign's
-- counters and status events to its own subscribers. Kept for an hour.
CREATE TABLE campaign_changes (
    id             BIGSERIAL PRIMARY KEY,
    xact           BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    campaign_pk    BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    total          BIGINT NOT NULL,
    sent           BIGINT NOT NULL,
    delivered      BIGINT NOT NULL,
    read           BIGINT NOT NULL,
    clicked        BIGINT NOT NULL,
    complained     BIGINT NOT NULL,
    now_pending    BIGINT NOT NULL,
    now_sent       BIGINT NOT NULL,
    now_delivered  BIGINT NOT NULL,
    now_read       BIGINT NOT NULL,
    now_failed     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX campaign_changes_by_position ON campaign_changes (xact, id);
