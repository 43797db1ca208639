-- See migrations/sqlite/0003_dead_letter_replay.sql; PostgreSQL types.
-- Dead-letter replay: each dead letter records how its sender was verified
-- at receipt (so a replay needs no second signature check) and what its
-- last replay did.
--
-- `verification`: 'hmac-sha256' (WhatsApp X-Hub-Signature-256),
-- 'sns-signature' (SNS signature, `verification_detail` the certificate
-- URL it verified under), 'disabled' (verification was off: nobody vouches
-- for the payload), NULL for rows stored before this migration (unknown).
ALTER TABLE dead_letters ADD COLUMN verification TEXT;
ALTER TABLE dead_letters ADD COLUMN verification_detail TEXT;

-- The last replay: when, its outcome ('applied', 'partial', 'failed'), the
-- parser's complaint when something stayed uninterpretable, what became of
-- the statuses, and how many replays were run. `is_open` is true until a replay
-- applied everything.
ALTER TABLE dead_letters ADD COLUMN is_open BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE dead_letters ADD COLUMN replays BIGINT NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN replayed_at BIGINT;
ALTER TABLE dead_letters ADD COLUMN replay_outcome TEXT;
ALTER TABLE dead_letters ADD COLUMN replay_error TEXT;
ALTER TABLE dead_letters ADD COLUMN replay_received BIGINT;
ALTER TABLE dead_letters ADD COLUMN replay_applied BIGINT;
ALTER TABLE dead_letters ADD COLUMN replay_duplicates BIGINT;
ALTER TABLE dead_letters ADD COLUMN replay_unmatched BIGINT;

-- The open list, newest first, without a scan of the replayed ones.
CREATE INDEX dead_letters_by_state ON dead_letters (is_open, id);
