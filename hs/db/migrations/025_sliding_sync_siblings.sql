-- Sliding sync positions name the position they followed (`base_id`; 0 for a connection's first), so
-- that two requests continuing from one position can both keep their answers: the client may use
-- either (one abandoned but not closed, say), and a position's view is its base's rows and its own.
-- The positions stored before this cannot say which rows are theirs: they are dropped, and clients
-- continuing from one get M_UNKNOWN_POS and start over, which the protocol provides for.
DELETE FROM sliding_sync_rooms;
DELETE FROM sliding_sync_positions;
DELETE FROM sliding_sync_connections;
ALTER TABLE sliding_sync_positions ADD COLUMN base_id BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sliding_sync_positions_base ON sliding_sync_positions (connection_id, base_id);
