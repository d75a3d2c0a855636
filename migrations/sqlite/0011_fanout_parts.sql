-- A large round's fan-out is written in parts, each its own transaction
-- (migrations/postgres/0011_fanout_parts.sql says why). `fanned_out_at` is
-- set by the part that completes it; SQLite holds the rule PostgreSQL's
-- CHECK does with triggers.
ALTER TABLE rounds ADD COLUMN fanned_out_at INTEGER;
UPDATE rounds SET fanned_out_at = fired_at WHERE fired_at IS NOT NULL;
CREATE INDEX rounds_fanning_out ON rounds (id) WHERE fired_at IS NOT NULL AND fanned_out_at IS NULL;

CREATE TRIGGER rounds_fanned_out_insert BEFORE INSERT ON rounds
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: rounds_fanned_out_after_firing')
        WHERE NOT (NEW.fanned_out_at IS NULL OR (NEW.fired_at IS NOT NULL AND NEW.fanned_out_at >= NEW.fired_at));
END;

CREATE TRIGGER rounds_fanned_out_update BEFORE UPDATE OF fired_at, fanned_out_at ON rounds
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: rounds_fanned_out_after_firing')
        WHERE NOT (NEW.fanned_out_at IS NULL OR (NEW.fired_at IS NOT NULL AND NEW.fanned_out_at >= NEW.fired_at));
END;
