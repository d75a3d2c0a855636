-- The plan stored at `exercise load`: every round's instant, bucket, holiday,
-- targets and the seed it was drawn from (PRODUCT.md §2.2). Never re-drawn.
ALTER TABLE exercises ADD COLUMN plan_json TEXT;

-- Reports and escalation look rows up by their parent; without these every
-- report row scans the messages of the whole exercise (outcomes and acks are
-- covered by their unique keys).
CREATE INDEX notifications_round ON notifications (round_id);
CREATE INDEX messages_notification ON messages (notification_id);
CREATE INDEX rounds_due ON rounds (state, planned_at);
