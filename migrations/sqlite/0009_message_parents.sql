-- no-transaction
-- A message hangs from its outcome, and its notification is its outcome's.
--
-- `messages` had three foreign keys (notification, outcome, roster version),
-- each checked by its own lookup for every row a fan-out writes. One key on
-- the pair (outcome_id, notification_id) now checks both parents in one
-- lookup, and also that the two agree, which the separate keys never did.
-- `roster_version` is dropped: it was always the round's roster version
-- (`rounds.roster_version`), written on every message and never read.
--
-- SQLite cannot change a table's foreign keys in place, so `messages` is
-- rebuilt by the procedure 0007 and 0008 used (foreign keys off, copy, drop,
-- rename, recreate the indexes); rows and ids are copied unchanged.
PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

-- The parent key of the pair: SQLite wants a unique index on exactly the
-- referenced columns.
CREATE UNIQUE INDEX outcomes_id_notification ON outcomes (id, notification_id);

CREATE TABLE messages_rebuilt (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id  INTEGER NOT NULL,
    outcome_id       INTEGER NOT NULL,
    contact_id       TEXT    NOT NULL,
    channel          TEXT    NOT NULL CHECK (channel = 'sms' OR channel = 'email' OR channel = 'webhook'),
    address          TEXT    NOT NULL,
    step             INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state = 'pending' OR state = 'sending' OR state = 'accepted' OR state = 'delivered' OR state = 'undelivered' OR state = 'failed' OR state = 'expired' OR state = 'cancelled' OR state = 'not_configured'),
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
    FOREIGN KEY (outcome_id, notification_id) REFERENCES outcomes (id, notification_id),
    CHECK ((state = 'sending') = (claimed_by IS NOT NULL)),
    CHECK ((state <> 'accepted' AND state <> 'delivered') OR accepted_at IS NOT NULL),
    CONSTRAINT messages_finished_when_final
        CHECK ((state = 'pending' OR state = 'sending' OR state = 'accepted') = (finished_at IS NULL)),
    CONSTRAINT messages_claim_expires
        CHECK ((state = 'sending') = (claim_expires_at IS NOT NULL)),
    CONSTRAINT messages_delivered_at
        CHECK ((state = 'delivered') = (delivered_at IS NOT NULL)),
    CONSTRAINT messages_provider_named
        CHECK ((state <> 'accepted' AND state <> 'delivered' AND state <> 'undelivered') OR provider IS NOT NULL),
    CONSTRAINT messages_cancel_reason
        CHECK (state <> 'cancelled' OR (state_reason IS NOT NULL AND (state_reason = 'endex' OR state_reason = 'acked' OR state_reason = 'opted_out'))),
    CONSTRAINT messages_failure_class
        CHECK (state <> 'failed' OR (state_reason IS NOT NULL AND (state_reason = 'transient' OR state_reason = 'permanent'))),
    CONSTRAINT messages_payload_while_sendable
        CHECK (state = 'pending' OR state = 'sending' OR payload IS NULL),
    CONSTRAINT messages_attempts
        CHECK (attempts >= 0)
);

INSERT INTO messages_rebuilt (
    id, notification_id, outcome_id, contact_id, channel, address, step,
    state, state_reason, payload, created_at, due_at, expires_at, attempts, claimed_by,
    claim_expires_at, provider, provider_ref, accepted_at, delivered_at, finished_at, last_error)
SELECT
    id, notification_id, outcome_id, contact_id, channel, address, step,
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

CREATE INDEX messages_pending ON messages (due_at, id) WHERE state = 'pending';
CREATE INDEX messages_sending ON messages (claim_expires_at) WHERE state = 'sending';
CREATE INDEX messages_notification ON messages (notification_id);
-- Only what a provider took has its reference: pending rows (a whole round
-- at fan-out) stay out of this index.
CREATE INDEX messages_provider_ref ON messages (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;

COMMIT;

PRAGMA foreign_keys = ON;
