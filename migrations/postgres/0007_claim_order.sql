-- The outbox is claimed in (due_at, id) order. With `id` in the index a claim
-- walks it in that order and stops after the batch, instead of sorting every
-- due row of a large round to find the first few.
DROP INDEX messages_due;
CREATE INDEX messages_due ON messages (state, due_at, id);

-- Only what a provider took has its reference: pending rows (a whole round
-- at fan-out) stay out of the index receipts are matched by.
DROP INDEX messages_provider_ref;
CREATE INDEX messages_provider_ref ON messages (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;
