-- statushub schema for SQLite. All times are Unix milliseconds (INTEGER).

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE campaigns (
    id           INTEGER PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    campaign_id  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (tenant_id, campaign_id)
);
CREATE INDEX campaigns_by_name ON campaigns (campaign_id);

-- Live counters, changed by deltas in the same transaction as the message
-- rows they count, so they always equal a COUNT over messages.
CREATE TABLE campaign_counters (
    campaign_pk    INTEGER PRIMARY KEY NOT NULL REFERENCES campaigns (id),
    version        INTEGER NOT NULL DEFAULT 0,
    total          INTEGER NOT NULL DEFAULT 0,
    sent           INTEGER NOT NULL DEFAULT 0,
    delivered      INTEGER NOT NULL DEFAULT 0,
    read           INTEGER NOT NULL DEFAULT 0,
    clicked        INTEGER NOT NULL DEFAULT 0,
    complained     INTEGER NOT NULL DEFAULT 0,
    now_pending    INTEGER NOT NULL DEFAULT 0,
    now_sent       INTEGER NOT NULL DEFAULT 0,
    now_delivered  INTEGER NOT NULL DEFAULT 0,
    now_read       INTEGER NOT NULL DEFAULT 0,
    now_failed     INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL
);

-- One row per registered message. `seen` is the status set as a bit mask
-- (closed under the implications), `status` the current status derived from
-- it, `*_at` the first provider timestamp of each status observed directly.
CREATE TABLE messages (
    id                   INTEGER PRIMARY KEY,
    campaign_pk          INTEGER NOT NULL REFERENCES campaigns (id),
    channel              TEXT NOT NULL,
    provider_message_id  TEXT NOT NULL,
    recipient            TEXT,
    seen                 INTEGER NOT NULL DEFAULT 0,
    status               TEXT NOT NULL DEFAULT 'pending',
    sent_at              INTEGER,
    delivered_at         INTEGER,
    read_at              INTEGER,
    clicked_at           INTEGER,
    complained_at        INTEGER,
    failed_at            INTEGER,
    error_code           TEXT,
    error_title          TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    UNIQUE (channel, provider_message_id)
);
CREATE INDEX messages_by_campaign_status ON messages (campaign_pk, status);

-- One row per distinct provider notification that reached a known message.
-- `campaign_version` is the campaign's counters version right after this
-- event changed the message (NULL when it changed nothing): the cursor SSE
-- clients resume from. `message_status` is the message's current status
-- right after the event.
CREATE TABLE status_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    message_pk       INTEGER NOT NULL REFERENCES messages (id),
    campaign_pk      INTEGER NOT NULL REFERENCES campaigns (id),
    event            TEXT NOT NULL,
    status           TEXT,
    changed          INTEGER NOT NULL,
    campaign_version INTEGER,
    message_status   TEXT NOT NULL,
    provider_ts      INTEGER NOT NULL,
    details          TEXT,
    received_at      INTEGER NOT NULL
);
CREATE INDEX status_events_by_message ON status_events (message_pk, id);
CREATE INDEX status_events_by_campaign ON status_events (campaign_pk, campaign_version)
    WHERE campaign_version IS NOT NULL;

-- Statuses for message ids nobody registered yet, kept (default 7 days)
-- until the message is registered; the update is stored as JSON.
CREATE TABLE unmatched_statuses (
    id                   INTEGER PRIMARY KEY,
    idempotency_key      TEXT NOT NULL UNIQUE,
    channel              TEXT NOT NULL,
    provider_message_id  TEXT NOT NULL,
    status_update        TEXT NOT NULL,
    received_at          INTEGER NOT NULL
);
CREATE INDEX unmatched_by_message ON unmatched_statuses (channel, provider_message_id);
CREATE INDEX unmatched_by_age ON unmatched_statuses (received_at);

-- Correctly signed payloads statushub could not interpret, kept verbatim.
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    channel       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    content_type  TEXT,
    body          BLOB NOT NULL,
    received_at   INTEGER NOT NULL
);
