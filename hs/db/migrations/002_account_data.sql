-- Account data: per-user config, global (room_id = '') or for one room (incl. m.tag room tags).
-- One row per (user, room, type); every write moves the row to a new stream position.

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);
CREATE INDEX account_data_stream ON account_data (stream_id);
