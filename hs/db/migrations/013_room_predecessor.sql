-- The room an upgrade replaced, recorded with the new room's row (in the transaction that persists
-- its events), so that an upgrade that stopped after creating the new room resumes with it.
ALTER TABLE rooms ADD COLUMN predecessor_room_id TEXT;
CREATE INDEX rooms_predecessor ON rooms (predecessor_room_id, creator);
