"""Search candidates: the events a search term may match, found by a LIKE over their stored JSON.

There is no full-text index (see hs/services/search.py): the service matches the candidates exactly.
"""

from __future__ import annotations

from hs.db.pool import Database
from hs.db.stores.where import Where
from hs.util import like_pattern


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def candidate_event_ids(self, room_ids: list[str], types: list[str], words: list[str],
                                  limit: int) -> list[str]:
        """IDs of the rooms' events of `types` whose JSON contains every word (case-insensitively),
        newest first, at most `limit`."""
        where = Where()
        for word in words:
            where.add("LOWER(json) LIKE {} ESCAPE '\\'", like_pattern(word))
        where.add(f"type IN ({where.marks(types)})")
        where.add(f"room_id IN ({where.marks(room_ids)})")
        rows = await self.db.fetch(
            f"SELECT event_id FROM events WHERE {where} ORDER BY stream_ordering DESC LIMIT {where.arg(limit)}",
            *where.args)
        return [r["event_id"] for r in rows]
