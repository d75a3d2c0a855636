-- Instants are UTC epoch milliseconds; ids are integers; enums are text.

CREATE TABLE roster_versions (
    id          BIGSERIAL PRIMARY KEY,
    loaded_at   BIGINT NOT NULL,
    digest      TEXT    NOT NULL,
    roster_json TEXT    NOT NULL
);

CREATE TABLE exercises (
    id             TEXT PRIMARY KEY,
    title          TEXT    NOT NULL,
    schedule_json  TEXT    NOT NULL,
    schedule_digest TEXT   NOT NULL,
    roster_version BIGINT NOT NULL REFERENCES roster_versions(id),
    state          TEXT    NOT NULL CHECK (state IN ('loaded', 'running', 'paused', 'ended')),
    loaded_at      BIGINT NOT NULL,
    started_at     BIGINT,
    authorised_by  TEXT,
    ended_at       BIGINT
);

CREATE TABLE rounds (
    id             BIGSERIAL PRIMARY KEY,
    exercise_id    TEXT    NOT NULL REFERENCES exercises(id),
    label          TEXT    NOT NULL,
    slot           TEXT    NOT NULL,
    planned_at     BIGINT NOT NULL,
    fired_at       BIGINT,
    closed_at      BIGINT,
    state          TEXT    NOT NULL CHECK (state IN ('planned', 'queued', 'fired', 'closed', 'skipped', 'cancelled')),
    state_reason   TEXT,
    roster_version BIGINT REFERENCES roster_versions(id),
    departments    TEXT,
    UNIQUE (exercise_id, slot),
    UNIQUE (exercise_id, label),
    CHECK ((state IN ('fired', 'closed')) = (fired_at IS NOT NULL))
);

CREATE TABLE notifications (
    id                    BIGSERIAL PRIMARY KEY,
    round_id              BIGINT NOT NULL REFERENCES rounds(id),
    department            TEXT    NOT NULL,
    status                TEXT    NOT NULL CHECK (status IN ('open', 'escalated', 'on_target', 'late', 'missed', 'unreachable', 'cancelled')),
    step                  BIGINT NOT NULL DEFAULT 1,
    fired_at              BIGINT NOT NULL,
    target_at             BIGINT NOT NULL,
    deadline_at           BIGINT NOT NULL,
    final_at              BIGINT NOT NULL,
    acked_at              BIGINT,
    ack_after_deadline_at BIGINT,
    finalised_at          BIGINT,
    UNIQUE (round_id, department)
);

CREATE TABLE outcomes (
    id              BIGSERIAL PRIMARY KEY,
    notification_id BIGINT NOT NULL REFERENCES notifications(id),
    contact_id      TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    code            TEXT    NOT NULL,
    code_live       BIGINT NOT NULL DEFAULT 1,
    token_digest    TEXT    NOT NULL UNIQUE,
    token_expires_at BIGINT NOT NULL,
    step            BIGINT NOT NULL,
    notified_at     BIGINT NOT NULL,
    accepted_at     BIGINT,
    delivered_at    BIGINT,
    acked_at        BIGINT,
    UNIQUE (notification_id, contact_id)
);
CREATE UNIQUE INDEX outcomes_live_code ON outcomes (code) WHERE code_live = 1;

CREATE TABLE messages (
    id               BIGSERIAL PRIMARY KEY,
    notification_id  BIGINT NOT NULL REFERENCES notifications(id),
    outcome_id       BIGINT NOT NULL REFERENCES outcomes(id),
    contact_id       TEXT    NOT NULL,
    channel          TEXT    NOT NULL CHECK (channel IN ('sms', 'email', 'webhook')),
    address          TEXT    NOT NULL,
    roster_version   BIGINT NOT NULL REFERENCES roster_versions(id),
    step             BIGINT NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'accepted', 'delivered', 'undelivered', 'failed', 'expired', 'cancelled', 'not_configured')),
    state_reason     TEXT,
    payload          TEXT,
    created_at       BIGINT NOT NULL,
    due_at           BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    claimed_by       TEXT,
    claim_expires_at BIGINT,
    provider         TEXT,
    provider_ref     TEXT,
    accepted_at      BIGINT,
    delivered_at     BIGINT,
    finished_at      BIGINT,
    last_error       TEXT,
    UNIQUE (outcome_id, channel, step),
    CHECK ((state = 'sending') = (claimed_by IS NOT NULL)),
    CHECK (state NOT IN ('accepted', 'delivered') OR accepted_at IS NOT NULL)
);
CREATE INDEX messages_due ON messages (state, due_at);

CREATE TABLE inbound (
    id          BIGSERIAL PRIMARY KEY,
    received_at BIGINT NOT NULL,
    channel     TEXT    NOT NULL,
    source      TEXT,
    raw         TEXT    NOT NULL,
    outcome_id  BIGINT REFERENCES outcomes(id),
    result      TEXT    NOT NULL CHECK (result IN ('acked', 'repeat', 'refused')),
    reason      TEXT
);

CREATE TABLE acks (
    id              BIGSERIAL PRIMARY KEY,
    notification_id BIGINT NOT NULL REFERENCES notifications(id),
    outcome_id      BIGINT NOT NULL REFERENCES outcomes(id),
    contact_id      TEXT    NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('sms', 'link', 'email', 'webhook', 'operator')),
    acked_at        BIGINT NOT NULL,
    counts          BIGINT NOT NULL,
    inbound_id      BIGINT REFERENCES inbound(id),
    UNIQUE (notification_id, contact_id, channel)
);

CREATE TABLE events (
    seq         BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    kind        TEXT    NOT NULL,
    exercise_id TEXT,
    data        TEXT    NOT NULL
);

CREATE TABLE heartbeats (
    name TEXT PRIMARY KEY,
    at   BIGINT NOT NULL
);
