-- Events this server holds without placing them in a room's timeline: the state and auth chains that a
-- join or a gap fill brought (outliers), events the auth rules rejected (kept so they are not fetched
-- again, and never served or used as auth events), and soft-failed events (they passed the checks
-- against their own state but not against the room's current state: kept, not shown, not extended).
CREATE TABLE event_outliers (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    json TEXT NOT NULL,
    rejected_reason TEXT,
    soft_failed SMALLINT NOT NULL DEFAULT 0,
    state_group_before BIGINT,
    state_group_after BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX event_outliers_room ON event_outliers (room_id);

-- Rooms this server joined over federation: the room's row exists before any of its events is ours.
ALTER TABLE rooms ADD COLUMN remote SMALLINT NOT NULL DEFAULT 0;
