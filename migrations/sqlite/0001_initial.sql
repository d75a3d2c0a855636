-- Instants are UTC epoch milliseconds; ids are integers; enums are text.

CREATE TABLE roster_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    loaded_at   INTEGER NOT NULL,
    digest      TEXT    NOT NULL,
    roster_json TEXT    NOT NULL
);

CREATE TABLE exercises (
    id             TEXT PRIMARY KEY,
    title          TEXT    NOT NULL,
    schedule_json  TEXT    NOT NULL,
    schedule_digest TEXT   NOT NULL,
    roster_version INTEGER NOT NULL REFERENCES roster_versions(id),
    state          TEXT    NOT NULL CHECK (state IN ('loaded', 'running', 'paused', 'ended')),
    loaded_at      INTEGER NOT NULL,
    started_at     INTEGER,
    authorised_by  TEXT,
    ended_at       INTEGER
);

CREATE TABLE rounds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    exercise_id    TEXT    NOT NULL REFERENCES exercises(id),
    label          TEXT    NOT NULL,
    slot           TEXT    NOT NULL,
    planned_at     INTEGER NOT NULL,
    fired_at       INTEGER,
    closed_at      INTEGER,
    state          TEXT    NOT NULL CHECK (state IN ('planned', 'queued', 'fired', 'closed', 'skipped', 'cancelled')),
    state_reason   TEXT,
    roster_version INTEGER REFERENCES roster_versions(id),
    departments    TEXT,
    UNIQUE (exercise_id, slot),
    UNIQUE (exercise_id, label),
    CHECK ((state IN ('fired', 'closed')) = (fired_at IS NOT NULL))
);

CREATE TABLE notifications (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id              INTEGER NOT NULL REFERENCES rounds(id),
    department            TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('open', 'escalated', 'on_target', 'late', 'missed', 'unreachable', 'cancelled')),
    step                  INTEGER NOT NULL DEFAULT 1,
    fired_at              INTEGER NOT NULL,
    target_at             INTEGER NOT NULL,
    deadline_at           INTEGER NOT NULL,
    final_at              INTEGER NOT NULL,
    acked_at              INTEGER,
    ack_after_deadline_at INTEGER,
    finalised_at          INTEGER,
    UNIQUE (round_id, department)
);

CREATE TABLE outcomes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id INTEGER NOT NULL REFERENCES notifications(id),
    contact_id      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    code            TEXT    NOT NULL,
    code_live       INTEGER NOT NULL DEFAULT 1,
    token_digest    TEXT    NOT NULL UNIQUE,
    token_expires_at INTEGER NOT NULL,
    step            INTEGER NOT NULL,
    notified_at     INTEGER NOT NULL,
    accepted_at     INTEGER,
    delivered_at    INTEGER,
    acked_at        INTEGER,
    UNIQUE (notification_id, contact_id)
);
CREATE UNIQUE INDEX outcomes_live_code ON outcomes (code) WHERE code_live = 1;

CREATE TABLE messages (
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
    CHECK (state NOT IN ('accepted', 'delivered') OR accepted_at IS NOT NULL)
);
CREATE INDEX messages_due ON messages (state, due_at);

CREATE TABLE inbound (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    channel     TEXT    NOT NULL,
    source      TEXT,
    raw         TEXT    NOT NULL,
    outcome_id  INTEGER REFERENCES outcomes(id),
    result      TEXT    NOT NULL CHECK (result IN ('acked', 'repeat', 'refused')),
    reason      TEXT
);

CREATE TABLE acks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id INTEGER NOT NULL REFERENCES notifications(id),
    outcome_id      INTEGER NOT NULL REFERENCES outcomes(id),
    contact_id      TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('sms', 'link', 'email', 'webhook', 'operator')),
    acked_at        INTEGER NOT NULL,
    counts          INTEGER NOT NULL,
    inbound_id      INTEGER REFERENCES inbound(id),
    UNIQUE (notification_id, contact_id, channel)
);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    exercise_id TEXT,
    data        TEXT    NOT NULL
);

CREATE TABLE heartbeats (
    name TEXT PRIMARY KEY,
    at   INTEGER NOT NULL
);
