-- Messages are no longer indexed by notification. Each claim and each
-- result writes a new version of the message row, with an entry in every
-- index whose predicate holds; this one took a quarter of those entries.
-- What wanted a notification's messages reaches them through its outcomes
-- (`outcomes (notification_id, contact_id)`, then `messages (outcome_id,
-- channel, step)`), both indexed already.
DROP INDEX messages_notification;
