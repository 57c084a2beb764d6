-- Sliding sync (MSC4186) connections and the positions handed to clients as `pos`.
-- A connection is one (user, device, conn_id); each position names the stream token its response
-- covered and, per room, what had been sent by then (rows only for rooms whose record changed at
-- that position: a position's view is, per room, its newest row at or below it). `lazy_members`:
-- the members whose m.room.member event was sent for $LAZY, so they are not sent again.
-- A position is `used` once a request continued from it: the client got it, so a late answer to an
-- older request (a long-poll the client gave up) must not replace it.
CREATE TABLE sliding_sync_connections (
    connection_id {SERIAL_PK},
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    last_used_ts BIGINT NOT NULL
);
CREATE UNIQUE INDEX sliding_sync_connections_key ON sliding_sync_connections (user_id, device_id, conn_id);
CREATE INDEX sliding_sync_connections_used ON sliding_sync_connections (last_used_ts);

CREATE TABLE sliding_sync_positions (
    position_id {SERIAL_PK},
    connection_id BIGINT NOT NULL,
    token TEXT NOT NULL,
    lists TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    used SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX sliding_sync_positions_connection ON sliding_sync_positions (connection_id, position_id);

CREATE TABLE sliding_sync_rooms (
    connection_id BIGINT NOT NULL,
    position_id BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    status TEXT NOT NULL,
    sent_upto BIGINT NOT NULL,
    config TEXT NOT NULL,
    lazy_members TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (connection_id, room_id, position_id)
);
CREATE INDEX sliding_sync_rooms_position ON sliding_sync_rooms (connection_id, position_id);
