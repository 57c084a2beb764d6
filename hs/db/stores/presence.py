"""Presence: one row per local user with their current presence and the stream position of its last
visible change. Who may see whose presence is decided here too: users who share a joined room."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hs.db.pool import Connection, Database

ONLINE = "online"
UNAVAILABLE = "unavailable"
OFFLINE = "offline"
PRESENCE_STATES = (ONLINE, UNAVAILABLE, OFFLINE)

_COLUMNS = "user_id, state, status_msg, last_active_ts, last_user_sync_ts, currently_active, stream_id"

# Users (a.state_key) joined to a room the observer ($1) is joined to.
_ROOM_MATES = (
    "SELECT a.state_key FROM current_state_events b JOIN current_state_events a ON a.room_id = b.room_id"
    " WHERE b.type = 'm.room.member' AND b.state_key = $1 AND b.membership = 'join'"
    " AND a.type = 'm.room.member' AND a.membership = 'join'"
)


@dataclass(frozen=True)
class PresenceState:
    user_id: str
    state: str = OFFLINE
    status_msg: str | None = None
    last_active_ts: int = 0  # 0: never active
    last_user_sync_ts: int = 0
    currently_active: bool = False
    stream_id: int = 0  # position of the last change clients were told about; 0: never stored

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PresenceState:
        return cls(user_id=row["user_id"], state=row["state"], status_msg=row["status_msg"],
                   last_active_ts=int(row["last_active_ts"]), last_user_sync_ts=int(row["last_user_sync_ts"]),
                   currently_active=bool(row["currently_active"]), stream_id=int(row["stream_id"]))


class PresenceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> PresenceState | None:
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM presence WHERE user_id = $1", user_id)
        return None if row is None else PresenceState.from_row(row)

    async def get_not_offline(self) -> list[PresenceState]:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM presence WHERE state <> 'offline'")
        return [PresenceState.from_row(r) for r in rows]

    async def upsert(self, state: PresenceState) -> None:
        """Write the whole row (at its new stream position)."""

        async def txn(c: Connection) -> None:
            await c.execute(
                f"INSERT INTO presence ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,"
                " last_active_ts = excluded.last_active_ts, last_user_sync_ts = excluded.last_user_sync_ts,"
                " currently_active = excluded.currently_active, stream_id = excluded.stream_id",
                state.user_id, state.state, state.status_msg, state.last_active_ts, state.last_user_sync_ts,
                int(state.currently_active), state.stream_id)

        await self.db.run_transaction("presence_upsert", txn)

    async def update_timestamps(self, states: list[PresenceState]) -> None:
        """Write back quiet timestamp refreshes of stored rows; the stream position does not move."""
        if not states:
            return

        async def txn(c: Connection) -> None:
            await c.executemany(
                "UPDATE presence SET last_active_ts = $2, last_user_sync_ts = $3 WHERE user_id = $1",
                [(s.user_id, s.last_active_ts, s.last_user_sync_ts) for s in states])

        await self.db.run_transaction("presence_timestamps", txn)

    async def get_changed_for_observer(self, observer: str, after: int, upto: int) -> list[PresenceState]:
        """Rows changed in (after, upto] of the observer and of users sharing a joined room with them."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM presence p WHERE p.stream_id > $2 AND p.stream_id <= $3"
            " AND (p.user_id = $1 OR EXISTS ("
            " SELECT 1 FROM current_state_events a JOIN current_state_events b ON b.room_id = a.room_id"
            " WHERE a.type = 'm.room.member' AND a.state_key = p.user_id AND a.membership = 'join'"
            " AND b.type = 'm.room.member' AND b.state_key = $1 AND b.membership = 'join'))"
            " ORDER BY p.stream_id", observer, after, upto)
        return [PresenceState.from_row(r) for r in rows]

    async def get_current_for_observer(self, observer: str, upto: int) -> list[PresenceState]:
        """Rows up to `upto` that are not offline, of the observer and the users they share a room with."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM presence p WHERE p.stream_id <= $2 AND p.state <> 'offline'"
            f" AND (p.user_id = $1 OR p.user_id IN ({_ROOM_MATES})) ORDER BY p.stream_id", observer, upto)
        return [PresenceState.from_row(r) for r in rows]

    async def get_for_new_room_mates(self, observer: str, events_after: int, events_upto: int,
                                     upto: int) -> list[PresenceState]:
        """Rows up to `upto` of users who became the observer's room-mates in the events range
        (events_after, events_upto]: they joined one of the observer's rooms, or the observer joined
        theirs. Their presence may not have changed in the range, yet the observer has never seen it."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM presence p WHERE p.stream_id <= $4 AND p.user_id <> $1 AND p.user_id IN ("
            " SELECT e.state_key FROM events e JOIN current_state_events b ON b.room_id = e.room_id"
            " WHERE e.stream_ordering > $2 AND e.stream_ordering <= $3 AND e.type = 'm.room.member'"
            " AND e.membership = 'join' AND b.type = 'm.room.member' AND b.state_key = $1 AND b.membership = 'join'"
            " UNION"
            " SELECT a.state_key FROM events e JOIN current_state_events a ON a.room_id = e.room_id"
            " WHERE e.stream_ordering > $2 AND e.stream_ordering <= $3 AND e.type = 'm.room.member'"
            " AND e.state_key = $1 AND e.membership = 'join' AND a.type = 'm.room.member' AND a.membership = 'join'"
            ") ORDER BY p.stream_id", observer, events_after, events_upto, upto)
        return [PresenceState.from_row(r) for r in rows]

    async def shares_room(self, a: str, b: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT 1 FROM current_state_events x JOIN current_state_events y ON y.room_id = x.room_id"
            " WHERE x.type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'"
            " AND y.type = 'm.room.member' AND y.state_key = $2 AND y.membership = 'join' LIMIT 1", a, b))

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM presence") or 0)
