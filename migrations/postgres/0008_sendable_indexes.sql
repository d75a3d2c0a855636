-- The outbox's claim index holds only the rows that can still be sent.
--
-- `messages_due` indexed every message by (state, due_at, id), so both of a
-- message's state changes after the fan-out (claimed, then accepted) moved
-- its entry, and a finished message stayed in the index for good. Now a
-- pending message is indexed by (due_at, id), in claim order, and a claimed
-- one by the instant its claim lapses; a message in a final state is in
-- neither, so the claim indexes stay as small as the work left to do.
DROP INDEX messages_due;
CREATE INDEX messages_pending ON messages (due_at, id) WHERE state = 'pending';
CREATE INDEX messages_sending ON messages (claim_expires_at) WHERE state = 'sending';
