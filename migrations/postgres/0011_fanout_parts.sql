-- A large round's fan-out is written in parts, each its own transaction, so
-- the first departments' messages go out while the rest are still being
-- written. The first part marks the round fired (T0) and lists every
-- department it targets; `fanned_out_at` is set by the part that completes
-- the fan-out. A fired round without it was interrupted part-way (a crash,
-- a lost connection): the engine writes the departments still missing, with
-- the round's own T0, before it fires anything else.
ALTER TABLE rounds ADD COLUMN fanned_out_at BIGINT;
UPDATE rounds SET fanned_out_at = fired_at WHERE fired_at IS NOT NULL;
ALTER TABLE rounds ADD CONSTRAINT rounds_fanned_out_after_firing
    CHECK (fanned_out_at IS NULL OR (fired_at IS NOT NULL AND fanned_out_at >= fired_at));
CREATE INDEX rounds_fanning_out ON rounds (id) WHERE fired_at IS NOT NULL AND fanned_out_at IS NULL;
