-- A local room's forward extremity is rewritten on every send. With event_id in the primary key each
-- rewrite added an index entry (PostgreSQL cannot update an indexed column in place), so in a busy
-- room the lookup walked hundreds of dead entries until vacuum. Indexing room_id alone lets the
-- rewrite stay on its page (a HOT update) with no new index entry.
CREATE TABLE event_forward_extremities_new (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);
INSERT INTO event_forward_extremities_new (room_id, event_id)
SELECT room_id, event_id FROM event_forward_extremities;
DROP TABLE event_forward_extremities;
ALTER TABLE event_forward_extremities_new RENAME TO event_forward_extremities;
CREATE INDEX event_forward_extremities_room ON event_forward_extremities (room_id);
