-- A message hangs from its outcome, and its notification is its outcome's.
--
-- `messages` had three foreign keys (notification, outcome, roster version),
-- each checked by its own lookup for every row a fan-out writes: a third of
-- PostgreSQL's work in firing a 30,000-message round. One key on the pair
-- (outcome_id, notification_id) now checks both parents in one lookup, and
-- also that the two agree, which the separate keys never did.
--
-- `roster_version` is dropped: it was always the round's roster version
-- (`rounds.roster_version`), written on every message and never read.
ALTER TABLE outcomes ADD CONSTRAINT outcomes_id_notification UNIQUE (id, notification_id);
ALTER TABLE messages DROP CONSTRAINT messages_notification_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_outcome_id_fkey;
ALTER TABLE messages DROP COLUMN roster_version;
ALTER TABLE messages ADD CONSTRAINT messages_outcome_fkey
    FOREIGN KEY (outcome_id, notification_id) REFERENCES outcomes (id, notification_id);
