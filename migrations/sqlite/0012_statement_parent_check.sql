-- PostgreSQL's migration of this number replaces the foreign key from
-- messages to outcomes, which took a row lock per message, with checks run
-- once per statement. SQLite checks its foreign keys without locks and keeps
-- the key; this number has nothing to change here.
SELECT 1;
