-- The outbox state machine of PRODUCT.md §6, held by the schema: every row's
-- timestamps, reasons and claim agree with its state, whatever code wrote it.
-- (SQLite holds the same rules with triggers: it cannot add CHECKs to a table.)
ALTER TABLE messages
    -- Final states carry the instant they ended; live ones do not.
    ADD CONSTRAINT messages_finished_when_final
        CHECK ((state IN ('pending', 'sending', 'accepted')) = (finished_at IS NULL)),
    -- A claim has an expiry so a crashed sender's rows are picked up again.
    ADD CONSTRAINT messages_claim_expires
        CHECK ((state = 'sending') = (claim_expires_at IS NOT NULL)),
    -- Only a delivered message has a delivery time.
    ADD CONSTRAINT messages_delivered_at
        CHECK ((state = 'delivered') = (delivered_at IS NOT NULL)),
    -- What a provider took names the provider.
    ADD CONSTRAINT messages_provider_named
        CHECK (state NOT IN ('accepted', 'delivered', 'undelivered') OR provider IS NOT NULL),
    ADD CONSTRAINT messages_cancel_reason
        CHECK (state <> 'cancelled' OR (state_reason IS NOT NULL AND state_reason IN ('endex', 'acked', 'opted_out'))),
    ADD CONSTRAINT messages_failure_class
        CHECK (state <> 'failed' OR (state_reason IS NOT NULL AND state_reason IN ('transient', 'permanent'))),
    -- The rendered text is kept only while it may still be sent.
    ADD CONSTRAINT messages_payload_while_sendable
        CHECK (state IN ('pending', 'sending') OR payload IS NULL),
    ADD CONSTRAINT messages_attempts
        CHECK (attempts >= 0);
