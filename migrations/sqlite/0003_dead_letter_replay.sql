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
-- the statuses, and how many replays were run. `is_open` is 1 until a replay
-- applied everything.
ALTER TABLE dead_letters ADD COLUMN is_open INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dead_letters ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN replayed_at INTEGER;
ALTER TABLE dead_letters ADD COLUMN replay_outcome TEXT;
ALTER TABLE dead_letters ADD COLUMN replay_error TEXT;
ALTER TABLE dead_letters ADD COLUMN replay_received INTEGER;
ALTER TABLE dead_letters ADD COLUMN replay_applied INTEGER;
ALTER TABLE dead_letters ADD COLUMN replay_duplicates INTEGER;
ALTER TABLE dead_letters ADD COLUMN replay_unmatched INTEGER;

-- The open list, newest first, without a scan of the replayed ones.
CREATE INDEX dead_letters_by_state ON dead_letters (is_open, id);
