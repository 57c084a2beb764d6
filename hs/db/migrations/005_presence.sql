-- Presence: each local user's current presence, one row per user. Every change a client should see
-- moves the row to a new position of the presence stream (stream_id); quiet refreshes of the
-- timestamps (a sync that changes nothing visible) are written back without a new position.

CREATE TABLE presence (
    user_id TEXT NOT NULL PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    last_user_sync_ts BIGINT NOT NULL,
    currently_active INTEGER NOT NULL,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);
