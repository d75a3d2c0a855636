-- The outbox state machine of PRODUCT.md §6, held by the schema: every row's
-- timestamps, reasons and claim agree with its state, whatever code wrote it.
-- SQLite cannot add a CHECK to an existing table (and rebuilding `messages`
-- would break the tables that reference it), so each rule is a trigger that
-- aborts the statement with the same name PostgreSQL gives its constraint
-- (migrations/postgres/0004_outbox_rules.sql states why each rule exists).

CREATE TRIGGER messages_rules_insert BEFORE INSERT ON messages
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_finished_when_final')
        WHERE NOT ((NEW.state IN ('pending', 'sending', 'accepted')) = (NEW.finished_at IS NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_claim_expires')
        WHERE NOT ((NEW.state = 'sending') = (NEW.claim_expires_at IS NOT NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_delivered_at')
        WHERE NOT ((NEW.state = 'delivered') = (NEW.delivered_at IS NOT NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_provider_named')
        WHERE NOT (NEW.state NOT IN ('accepted', 'delivered', 'undelivered') OR NEW.provider IS NOT NULL);
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_cancel_reason')
        WHERE NOT (NEW.state <> 'cancelled' OR (NEW.state_reason IS NOT NULL AND NEW.state_reason IN ('endex', 'acked', 'opted_out')));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_failure_class')
        WHERE NOT (NEW.state <> 'failed' OR (NEW.state_reason IS NOT NULL AND NEW.state_reason IN ('transient', 'permanent')));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_payload_while_sendable')
        WHERE NOT (NEW.state IN ('pending', 'sending') OR NEW.payload IS NULL);
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_attempts')
        WHERE NOT (NEW.attempts >= 0);
END;

CREATE TRIGGER messages_rules_update BEFORE UPDATE ON messages
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_finished_when_final')
        WHERE NOT ((NEW.state IN ('pending', 'sending', 'accepted')) = (NEW.finished_at IS NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_claim_expires')
        WHERE NOT ((NEW.state = 'sending') = (NEW.claim_expires_at IS NOT NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_delivered_at')
        WHERE NOT ((NEW.state = 'delivered') = (NEW.delivered_at IS NOT NULL));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_provider_named')
        WHERE NOT (NEW.state NOT IN ('accepted', 'delivered', 'undelivered') OR NEW.provider IS NOT NULL);
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_cancel_reason')
        WHERE NOT (NEW.state <> 'cancelled' OR (NEW.state_reason IS NOT NULL AND NEW.state_reason IN ('endex', 'acked', 'opted_out')));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_failure_class')
        WHERE NOT (NEW.state <> 'failed' OR (NEW.state_reason IS NOT NULL AND NEW.state_reason IN ('transient', 'permanent')));
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_payload_while_sendable')
        WHERE NOT (NEW.state IN ('pending', 'sending') OR NEW.payload IS NULL);
    SELECT RAISE(ABORT, 'CHECK constraint failed: messages_attempts')
        WHERE NOT (NEW.attempts >= 0);
END;
