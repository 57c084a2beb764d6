"""The one read the legacy GET /events needs that /sync does not: a room's *oldest* events after a
stream position. /sync shows the newest of a range and marks the rest `limited`; /events must not skip
any, so it returns the oldest `limit` and the client asks again from the last one."""

from __future__ import annotations

from hs.db.pool import Database


class LegacySyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_event_ids_after(self, room_id: str, from_pos: int, to_pos: int, limit: int,
                                  ) -> list[tuple[int, str]]:
        """(stream_ordering, event_id) of the room's first `limit` events with
        from_pos < stream_ordering <= to_pos, in stream order (index events_room_stream)."""
        if limit <= 0 or from_pos >= to_pos:
            return []
        rows = await self.db.fetch(
            "SELECT stream_ordering, event_id FROM events WHERE room_id = $1 AND stream_ordering > $2"
            " AND stream_ordering <= $3 ORDER BY stream_ordering ASC LIMIT $4",
            room_id, from_pos, to_pos, limit)
        return [(int(r["stream_ordering"]), str(r["event_id"])) for r in rows]
