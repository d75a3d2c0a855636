-- no-transaction
-- The outbox rules of 0004 become CHECK constraints, and the claim index
-- names `id`.
--
-- 0004 held the rules with BEFORE INSERT/UPDATE triggers because SQLite
-- cannot add a CHECK to an existing table. A row trigger runs a program of
-- its own for every row written, and a round of 30,000 messages writes each
-- row three times (fan-out, claim, result): the triggers were about a third
-- of the store's time. So `messages` is rebuilt with the rules as named
-- CHECKs, by SQLite's documented procedure for changes ALTER TABLE cannot
-- make: with foreign keys off (which must be set outside a transaction, so
-- this migration manages its own), copy into a new table, drop the old one,
-- rename, recreate the indexes. The rows are copied unchanged, so every
-- reference to them still holds. The rule names and messages are unchanged ("CHECK constraint failed:
-- messages_…").
--
-- The claim walks the outbox in (due_at, id) order; the index ends in `id`
-- (in SQLite it did already, as the rowid; now both backends say so). The
-- index of provider references leaves out rows that have none.
PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE messages_rebuilt (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id  INTEGER NOT NULL REFERENCES notifications(id),
    outcome_id       INTEGER NOT NULL REFERENCES outcomes(id),
    contact_id       TEXT    NOT NULL,
    channel          TEXT    NOT NULL CHECK (channel IN ('sms', 'email', 'webhook')),
    address          TEXT    NOT NULL,
    roster_version   INTEGER NOT NULL REFERENCES roster_versions(id),
    step             INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'accepted', 'delivered', 'undelivered', 'failed', 'expired', 'cancelled', 'not_configured')),
    state_reason     TEXT,
    payload          TEXT,
    created_at       INTEGER NOT NULL,
    due_at           INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    claimed_by       TEXT,
    claim_expires_at INTEGER,
    provider         TEXT,
    provider_ref     TEXT,
    accepted_at      INTEGER,
    delivered_at     INTEGER,
    finished_at      INTEGER,
    last_error       TEXT,
    UNIQUE (outcome_id, channel, step),
    CHECK ((state = 'sending') = (claimed_by IS NOT NULL)),
    CHECK (state NOT IN ('accepted', 'delivered') OR accepted_at IS NOT NULL),
    CONSTRAINT messages_finished_when_final
        CHECK ((state IN ('pending', 'sending', 'accepted')) = (finished_at IS NULL)),
    CONSTRAINT messages_claim_expires
        CHECK ((state = 'sending') = (claim_expires_at IS NOT NULL)),
    CONSTRAINT messages_delivered_at
        CHECK ((state = 'delivered') = (delivered_at IS NOT NULL)),
    CONSTRAINT messages_provider_named
        CHECK (state NOT IN ('accepted', 'delivered', 'undelivered') OR provider IS NOT NULL),
    CONSTRAINT messages_cancel_reason
        CHECK (state <> 'cancelled' OR (state_reason IS NOT NULL AND state_reason IN ('endex', 'acked', 'opted_out'))),
    CONSTRAINT messages_failure_class
        CHECK (state <> 'failed' OR (state_reason IS NOT NULL AND state_reason IN ('transient', 'permanent'))),
    CONSTRAINT messages_payload_while_sendable
        CHECK (state IN ('pending', 'sending') OR payload IS NULL),
    CONSTRAINT messages_attempts
        CHECK (attempts >= 0)
);

INSERT INTO messages_rebuilt (
    id, notification_id, outcome_id, contact_id, channel, address, roster_version, step,
    state, state_reason, payload, created_at, due_at, expires_at, attempts, claimed_by,
    claim_expires_at, provider, provider_ref, accepted_at, delivered_at, finished_at, last_error)
SELECT
    id, notification_id, outcome_id, contact_id, channel, address, roster_version, step,
    state, state_reason, payload, created_at, due_at, expires_at, attempts, claimed_by,
    claim_expires_at, provider, provider_ref, accepted_at, delivered_at, finished_at, last_error
FROM messages;

-- Ids are never reused: the new table continues the old one's sequence.
DELETE FROM sqlite_sequence WHERE name = 'messages_rebuilt';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'messages_rebuilt', seq FROM sqlite_sequence WHERE name = 'messages';

-- Dropping the table drops its triggers and indexes.
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;

CREATE INDEX messages_due ON messages (state, due_at, id);
CREATE INDEX messages_notification ON messages (notification_id);
-- Only what a provider took has its reference: pending rows (a whole round
-- at fan-out) stay out of this index.
CREATE INDEX messages_provider_ref ON messages (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;

COMMIT;

PRAGMA foreign_keys = ON;
