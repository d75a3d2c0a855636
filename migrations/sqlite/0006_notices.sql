-- Exercise control notices (PRODUCT.md §12): what the `control` contacts of a
-- running exercise are told about the exercise itself, starting with SMS
-- providers failing over and recovering. A small outbox of its own: notices
-- are not notifications of a department and count in no metric.
CREATE TABLE notices (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    exercise_id TEXT    NOT NULL REFERENCES exercises(id),
    event_seq   INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    contact_id  TEXT    NOT NULL,
    channel     TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    address     TEXT    NOT NULL,
    payload     TEXT,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'accepted', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at  INTEGER NOT NULL,
    due_at      INTEGER NOT NULL,
    finished_at INTEGER,
    provider    TEXT,
    last_error  TEXT,
    -- One notice per event, exercise, contact and channel, however often
    -- the events are read again.
    UNIQUE (exercise_id, event_seq, contact_id, channel),
    CHECK ((state = 'pending') = (finished_at IS NULL)),
    CHECK (state = 'pending' OR payload IS NULL),
    CHECK (state <> 'accepted' OR provider IS NOT NULL)
);
CREATE INDEX notices_due ON notices (state, due_at);
