-- Messages are no longer indexed by notification: one index entry fewer
-- for every message a fan-out writes. What wanted a notification's messages
-- reaches them through its outcomes (`outcomes (notification_id,
-- contact_id)`, then `messages (outcome_id, channel, step)`), both indexed
-- already.
DROP INDEX messages_notification;
