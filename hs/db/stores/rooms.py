"""Rooms, aliases and the public room directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hs.db.pool import Connection, Database
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from hs.util import now_ms


class RoomIdTaken(Exception):
    """A new room's ID is already a room's: two create events came out identical (a v12 room ID is
    the create event's hash), or a random v1-v11 ID was drawn twice. The caller builds another."""


class AliasTaken(Exception):
    """The alias a new room was to get was taken meanwhile."""


@dataclass(frozen=True)
class NewRoom:
    """The rows a new room starts with besides its events, written in the transaction that persists
    them (`insert_new_room`), so a room exists with all of them or not at all."""

    creator: str
    is_public: bool = False
    alias: str | None = None
    # The room this one upgrades: recorded (an interrupted upgrade resumes with this room), and its
    # local aliases and room directory listing move here.
    upgrade_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"creator": self.creator, "is_public": self.is_public, "alias": self.alias,
                "upgrade_of": self.upgrade_of}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NewRoom:
        return cls(str(data["creator"]), bool(data.get("is_public")), data.get("alias"), data.get("upgrade_of"))


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._versions: dict[str, str] = {}

    async def insert_new_room(self, c: Connection, room_id: str, room_version: str, room: NewRoom) -> None:
        """Inside the transaction persisting a new room's first events: its row, alias and, for an
        upgrade, the predecessor's aliases and listing. Raises RoomIdTaken or AliasTaken, which roll
        the whole room back."""
        inserted = await c.fetchval(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts, predecessor_room_id)"
            " VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (room_id) DO NOTHING RETURNING room_id",
            room_id, room_version, room.creator, int(room.is_public), now_ms(), room.upgrade_of)
        if inserted is None:
            raise RoomIdTaken(room_id)
        if room.alias is not None:
            created = await c.fetchval(
                "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES ($1,$2,$3)"
                " ON CONFLICT (room_alias) DO NOTHING RETURNING room_alias", room.alias, room_id, room.creator)
            if created is None:
                raise AliasTaken(room.alias)
        if room.upgrade_of is not None:
            await c.execute("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1", room.upgrade_of, room_id)
            if await c.fetchval("SELECT is_public FROM rooms WHERE room_id = $1", room.upgrade_of):
                await c.execute("UPDATE rooms SET is_public = 1 WHERE room_id = $1", room_id)
                await c.execute("UPDATE rooms SET is_public = 0 WHERE room_id = $1", room.upgrade_of)

    async def insert_remote_room(self, room_id: str, room_version: str, creator: str | None) -> None:
        """The row of a room joined over federation, before its events arrive (they need its version)."""
        await self.db.execute(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts, remote)"
            " VALUES ($1,$2,$3,0,$4,1) ON CONFLICT (room_id) DO NOTHING",
            room_id, room_version, creator, now_ms())
        self._versions[room_id] = room_version

    def note_new_room(self, room_id: str, room_version: str) -> None:
        """After `insert_new_room` committed."""
        self._versions[room_id] = room_version

    async def get_latest_successor(self, room_id: str, creator: str) -> str | None:
        """The newest room `creator` created as an upgrade of `room_id`."""
        return await self.db.fetchval(  # type: ignore[no-any-return]
            "SELECT room_id FROM rooms WHERE predecessor_room_id = $1 AND creator = $2"
            " ORDER BY created_ts DESC, room_id LIMIT 1", room_id, creator)

    async def get_room_version_id(self, room_id: str) -> str | None:
        """Room versions never change, so they are cached forever."""
        v = self._versions.get(room_id)
        if v is None:
            v = await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id)
            if v is not None:
                self._versions[room_id] = v
        return v

    async def get_room_version(self, room_id: str) -> RoomVersion | None:
        """The room's version, or None for a room this server does not know."""
        vid = await self.get_room_version_id(room_id)
        return None if vid is None else KNOWN_ROOM_VERSIONS[vid]

    async def room_exists(self, room_id: str) -> bool:
        return await self.get_room_version_id(room_id) is not None

    async def get_room(self, room_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT * FROM rooms WHERE room_id = $1", room_id)

    async def set_room_is_public(self, room_id: str, is_public: bool) -> None:
        await self.db.execute("UPDATE rooms SET is_public = $2 WHERE room_id = $1", room_id, int(is_public))

    async def get_public_room_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY created_ts")
        return [r["room_id"] for r in rows]

    # -- aliases -------------------------------------------------------------------------------------
    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """False when the alias exists already (also when a concurrent create won)."""
        created = await self.db.fetchval(
            "INSERT INTO room_aliases (room_alias, room_id, creator) VALUES ($1,$2,$3)"
            " ON CONFLICT (room_alias) DO NOTHING RETURNING room_alias", alias, room_id, creator)
        return created is not None

    async def get_alias(self, alias: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT room_id, creator FROM room_aliases WHERE room_alias = $1", alias)

    async def delete_alias(self, alias: str) -> None:
        await self.db.execute("DELETE FROM room_aliases WHERE room_alias = $1", alias)

    async def get_aliases_for_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetch("SELECT room_alias FROM room_aliases WHERE room_id = $1 ORDER BY room_alias",
                                   room_id)
        return [r["room_alias"] for r in rows]
