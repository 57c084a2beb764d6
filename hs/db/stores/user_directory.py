"""What the user directory search reads: rooms open to anyone, and the joined members of rooms whose
user ID or display name matches a search term. Computed from current room state at each search,
so it is never stale (a directory kept up to date in the background would scale further)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Database
from hs.util import json_loads, like_pattern

# Rooms per query: keeps the placeholder list (SQLite's limit is 32766) and the plan small.
ROOM_CHUNK = 500


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def open_rooms(self) -> set[str]:
        """Rooms whose members anyone may find: public join rule or world-readable history."""
        rows = await self.db.fetch(
            "SELECT c.room_id, c.type, e.json FROM current_state_events c"
            " JOIN events e ON e.event_id = c.event_id"
            " WHERE c.state_key = '' AND c.type IN ('m.room.join_rules', 'm.room.history_visibility')")
        rooms: set[str] = set()
        for r in rows:
            content = json_loads(r["json"]).get("content")
            if not isinstance(content, dict):
                continue
            if (r["type"] == "m.room.join_rules" and content.get("join_rule") == "public") or (
                    r["type"] == "m.room.history_visibility"
                    and content.get("history_visibility") == "world_readable"):
                rooms.add(r["room_id"])
        return rooms

    async def matching_members(self, rooms: Sequence[str], term: str) -> list[dict[str, Any]]:
        """(room_id, user_id, displayname, avatar_url) of the joined members of `rooms` whose user ID
        or global display name contains `term` (case-insensitive); deactivated users left out."""
        pattern = like_pattern(term)
        out: list[dict[str, Any]] = []
        ordered = sorted(rooms)
        for i in range(0, len(ordered), ROOM_CHUNK):
            chunk = ordered[i:i + ROOM_CHUNK]
            placeholders = ",".join(f"${n + 2}" for n in range(len(chunk)))
            out.extend(await self.db.fetch(
                "SELECT c.room_id, c.state_key AS user_id, p.displayname, p.avatar_url"
                " FROM current_state_events c"
                " LEFT JOIN profiles p ON p.user_id = c.state_key"
                " LEFT JOIN users u ON u.user_id = c.state_key"
                " WHERE c.type = 'm.room.member' AND c.membership = 'join'"
                f" AND c.room_id IN ({placeholders}) AND COALESCE(u.deactivated, 0) = 0"
                " AND (LOWER(c.state_key) LIKE $1 ESCAPE '\\' OR LOWER(p.displayname) LIKE $1 ESCAPE '\\')",
                pattern, *chunk))
        return out
