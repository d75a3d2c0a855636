-- A fan-out's messages have their parent checked once per statement, not
-- once per row.
--
-- The foreign key (outcome_id, notification_id) -> outcomes ran a query and
-- took a row lock on the outcome for every message inserted: about a fifth
-- of PostgreSQL's work in writing a round of 30,000 messages. The same rule
-- is now a statement trigger that looks up all of an INSERT's messages at
-- once, and row triggers that keep it on the rare writes that could break it
-- later (a message moved to another outcome; an outcome deleted or re-keyed
-- while messages hang from it). Unlike the key, the check takes no lock on
-- the outcome: nothing deletes outcomes, and the triggers refuse it.
-- SQLite keeps its foreign key, which it checks without locks.
ALTER TABLE messages DROP CONSTRAINT messages_outcome_fkey;

CREATE FUNCTION messages_hang_from_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_messages m
               WHERE NOT EXISTS (SELECT 1 FROM outcomes o
                                 WHERE o.id = m.outcome_id AND o.notification_id = m.notification_id)) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'insert or update on table "messages" violates foreign key messages_outcome_fkey',
            DETAIL = 'A message hangs from an outcome of its own notification.';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_outcome_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_messages FOR EACH STATEMENT
    EXECUTE FUNCTION messages_hang_from_outcomes();

CREATE FUNCTION message_keeps_an_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outcomes o
                   WHERE o.id = NEW.outcome_id AND o.notification_id = NEW.notification_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'insert or update on table "messages" violates foreign key messages_outcome_fkey',
            DETAIL = 'A message hangs from an outcome of its own notification.';
    END IF;
    RETURN NEW;
END $$;

-- Fires only for an UPDATE that sets either column, which rollcall never does.
CREATE TRIGGER messages_outcome_update BEFORE UPDATE OF outcome_id, notification_id ON messages
    FOR EACH ROW EXECUTE FUNCTION message_keeps_an_outcome();

CREATE FUNCTION outcome_keeps_its_messages() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'TRUNCATE' AND EXISTS (SELECT 1 FROM messages))
       OR (TG_OP IN ('UPDATE', 'DELETE')
           AND (TG_OP = 'DELETE' OR NEW.id <> OLD.id OR NEW.notification_id <> OLD.notification_id)
           AND EXISTS (SELECT 1 FROM messages m WHERE m.outcome_id = OLD.id)) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'update or delete on table "outcomes" violates foreign key messages_outcome_fkey on table "messages"',
            DETAIL = 'Messages hang from the outcome.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outcomes_messages_kept BEFORE DELETE OR UPDATE OF id, notification_id ON outcomes
    FOR EACH ROW EXECUTE FUNCTION outcome_keeps_its_messages();
CREATE TRIGGER outcomes_messages_kept_truncate BEFORE TRUNCATE ON outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION outcome_keeps_its_messages();

-- The `ANALYZE` after a large fan-out (src/store/messages.rs) samples 300
-- rows per unit of statistics target: at the default 100 it read the whole
-- 30,000-row outbox. These columns guide the claims' plans, which need
-- proportions, not fine histograms.
ALTER TABLE messages
    ALTER COLUMN state SET STATISTICS 10,
    ALTER COLUMN due_at SET STATISTICS 10,
    ALTER COLUMN expires_at SET STATISTICS 10,
    ALTER COLUMN channel SET STATISTICS 10,
    ALTER COLUMN notification_id SET STATISTICS 10;
ALTER TABLE outcomes ALTER COLUMN notification_id SET STATISTICS 10;
ALTER TABLE notifications
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN acked_at SET STATISTICS 10;
