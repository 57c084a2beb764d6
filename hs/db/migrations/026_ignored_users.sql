-- Who ignores whom: the `ignored_users` keys of each user's global `m.ignored_user_list` account data,
-- kept in step with it by the account data writer (in the transaction that stores the list), so that
-- push rule evaluation finds the local users ignoring an event's sender with one indexed query
-- instead of reading every member's account data (as Synapse's ignored_users table does).
CREATE TABLE ignored_users (
    ignorer_user_id TEXT NOT NULL,
    ignored_user_id TEXT NOT NULL,
    PRIMARY KEY (ignorer_user_id, ignored_user_id)
);
CREATE INDEX ignored_users_ignored ON ignored_users (ignored_user_id);
-- Lists stored before this table existed are indexed once by the account data writer at its next
-- start-up (JSON is read differently by the two engines, so not here); the row marks that pending.
CREATE TABLE ignored_users_backfill (
    pending INTEGER NOT NULL
);
INSERT INTO ignored_users_backfill (pending) VALUES (1);
