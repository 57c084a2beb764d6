"""Rooms, aliases and the public room directory."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.util import now_ms


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._versions: dict[str, str] = {}

    async def store_room(self, room_id: str, room_version: str, creator: str, is_public: bool) -> None:
        await self.db.execute(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES ($1,$2,$3,$4,$5)"
            " ON CONFLICT (room_id) DO NOTHING",
            room_id, room_version, creator, int(is_public), now_ms(),
        )
        self._versions[room_id] = room_version

    async def get_room_version_id(self, room_id: str) -> str | None:
        """Room versions never change, so they are cached forever."""
        v = self._versions.get(room_id)
        if v is None:
            v = await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id)
            if v is not None:
                self._versions[room_id] = v
        return v

    async def get_room(self, room_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT * FROM rooms WHERE room_id = $1", room_id)

    async def set_room_is_public(self, room_id: str, is_public: bool) -> None:
        await self.db.execute("UPDATE rooms SET is_public = $2 WHERE room_id = $1", room_id, int(is_public))

    async def get_public_room_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY created_ts")
        return [r["room_id"] for r in rows]

    # -- aliases -------------------------------------------------------------------------------------
    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        existing = await self.db.fetchval("SELECT room_id FROM room_aliases WHERE room_alias = $1", alias)
        if existing is not None:
            return False
        await self.db.execute("INSERT INTO room_aliases (room_alias, room_id, creator) VALUES ($1,$2,$3)",
                              alias, room_id, creator)
        return True

    async def get_alias(self, alias: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT room_id, creator FROM room_aliases WHERE room_alias = $1", alias)

    async def delete_alias(self, alias: str) -> None:
        await self.db.execute("DELETE FROM room_aliases WHERE room_alias = $1", alias)

    async def get_aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT room_alias FROM room_aliases WHERE room_id = $1 ORDER BY room_alias",
                                   room_id)
        return [r["room_alias"] for r in rows]
