-- Relations between events (m.relates_to with a rel_type: thread replies, edits, reactions,
-- references), for /relations, /threads and the aggregations bundled with parent events.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    relates_to_id TEXT NOT NULL,
    relation_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, relation_type, stream_ordering);
CREATE INDEX event_relations_room ON event_relations (room_id, relation_type, stream_ordering);
-- The relations of events stored before this table existed (redacted events have none).
INSERT INTO event_relations (event_id, room_id, relates_to_id, relation_type, event_type, sender, stream_ordering)
SELECT event_id, room_id, {REL_EVENT_ID}, {REL_TYPE}, type, sender, stream_ordering FROM events
WHERE redacted_by IS NULL AND {REL_TYPE} IS NOT NULL AND {REL_EVENT_ID} IS NOT NULL
  AND {REL_TYPE} <> '' AND {REL_EVENT_ID} <> '';
