-- Retention: timeline events and dead letters are pruned in small batches,
-- oldest first. What was pruned is remembered, so that a client resuming
-- from a point whose events are gone gets a reset and a snapshot instead of
-- a silent gap.

-- The highest campaign version among a campaign's pruned events: a campaign
-- stream resuming below it cannot be replayed.
ALTER TABLE campaign_counters ADD COLUMN pruned_version INTEGER NOT NULL DEFAULT 0;

-- Store-wide marks; `events_pruned_through` is the highest pruned
-- `status_events.id`: a tenant stream resuming below it cannot be replayed.
CREATE TABLE store_marks (
    name   TEXT PRIMARY KEY NOT NULL,
    value  INTEGER NOT NULL
);
