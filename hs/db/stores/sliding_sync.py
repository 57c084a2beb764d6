"""Sliding sync's tables: connections, their positions, and what each position had sent per room;
and the few reads the room lists need in bulk (bump stamps, room types and encryption, tags).

A position's per-room view is the newest row at or below it of each room: a response writes rows only
for the rooms whose record changed. Positions form a chain per connection of which the last two are
kept (the client may retry the previous one); rows of positions dropped from the chain's old end stay
as long as no newer row of their room replaces them, rows of an abandoned branch go with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import json_dumps, json_loads

# Per device, the connections kept (the least recently used beyond this are dropped).
MAX_CONNECTIONS_PER_DEVICE = 100
# Positions kept that follow one position (requests that continued from it; the client uses one).
MAX_SIBLINGS = 10
# A new connection's first position does not wait for PostgreSQL to flush it to disk
# (`synchronous_commit` off for that statement's transaction only, set in a CTE joined into the query,
# since unreferenced CTEs are not run): should PostgreSQL crash, the positions of the last fraction of
# a second may be lost, and a client continuing from one gets M_UNKNOWN_POS and starts over, which the
# protocol provides for. Commits are durable in order, so nothing else is lost. (A transaction would
# need a round trip more for `SET LOCAL` than the flush costs: the others keep their flush.)
_NO_FLUSH = "no_flush AS (SELECT set_config('synchronous_commit', 'off', true))"
# A connection's last use is written down at most this often (idle expiry counts in days).
LAST_USED_RESOLUTION_MS = 60 * 1000
# Bulk reads ask at most this many rooms per statement (both engines' parameter limits are far above).
CHUNK = 500


@dataclass(frozen=True)
class RoomRecord:
    """What a connection had sent of a room: `status` "live" (everything up to the position's token)
    or "previously" (up to `sent_upto`, then it left the lists), and the config it was sent with."""

    status: str
    sent_upto: int
    config: str
    # The members whose m.room.member event was sent for lazy loading (sorted).
    lazy_members: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredPosition:
    position_id: int
    connection_id: int
    token: str
    lists: dict[str, Any]
    rooms: dict[str, RoomRecord]


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _marks(start: int, count: int) -> str:
    return ",".join(f"${start + i}" for i in range(count))


class SlidingSyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- connections and positions ----------------------------------------------------------------------
    async def start_connection(self, user_id: str, device_id: str, conn_id: str, now: int) -> int:
        """Start (or restart) the connection, with no position yet (`first_position` adds it); returns
        its ID. Its old incarnation is gone, and so are the device's least recently used connections
        beyond the bound. (Idle connections are dropped by the background tasks:
        `delete_idle_connections`.)"""

        async def txn(c: Connection) -> int:
            # The device's connections, newest first (at most the bound, plus the one being added):
            # this one's old incarnation and those beyond the bound are dropped.
            rows = await c.fetch(
                "SELECT connection_id, conn_id FROM sliding_sync_connections WHERE user_id = $1 AND device_id = $2"
                " ORDER BY last_used_ts DESC, connection_id DESC", user_id, device_id)
            kept = [int(r["connection_id"]) for r in rows if r["conn_id"] != conn_id]
            dropped = [int(r["connection_id"]) for r in rows if r["conn_id"] == conn_id]
            dropped += kept[MAX_CONNECTIONS_PER_DEVICE - 1:]
            await self._delete_connections(c, dropped)
            return int(await c.fetchval(
                "INSERT INTO sliding_sync_connections (user_id, device_id, conn_id, created_ts, last_used_ts)"
                " VALUES ($1, $2, $3, $4, $4) RETURNING connection_id", user_id, device_id, conn_id, now))

        return await self.db.run_transaction("sliding_sync_start_connection", txn)

    async def first_position(self, connection_id: int, token: str, lists: dict[str, Any],
                             rooms: dict[str, RoomRecord], now: int) -> int:
        """A started connection's first position, with its rooms' records, all or nothing; returns its ID.
        On PostgreSQL one statement (a new connection's first response waits for it)."""
        if self.db.engine != "postgres":
            return await self.db.run_transaction(
                "sliding_sync_first_position",
                lambda c: self._insert_position(c, connection_id, token, lists, rooms, now))
        columns: list[list[Any]] = [[], [], [], [], []]
        for room_id, r in rooms.items():
            for column, value in zip(columns, (room_id, r.status, r.sent_upto, r.config,
                                               json_dumps(list(r.lazy_members))), strict=True):
                column.append(value)
        return int(await self.db.fetchval(
            f"WITH {_NO_FLUSH}, p AS (INSERT INTO sliding_sync_positions (connection_id, token, lists, created_ts)"
            " VALUES ($1, $2, $3, $4) RETURNING position_id),"
            " r AS (INSERT INTO sliding_sync_rooms (connection_id, position_id, room_id, status, sent_upto, config,"
            " lazy_members) SELECT $1, p.position_id, x.room_id, x.status, x.sent_upto, x.config, x.lazy_members"
            " FROM p, unnest($5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[])"
            " AS x(room_id, status, sent_upto, config, lazy_members))"
            " SELECT position_id FROM p, no_flush", connection_id, token, json_dumps(lists), now, *columns))

    @staticmethod
    async def _delete_connections(c: Connection, ids: list[int]) -> None:
        """Drop the connections with their positions and room records (three statements for any number)."""
        ids = sorted(set(ids))
        if not ids:
            return
        marks = ", ".join(f"${i}" for i in range(1, len(ids) + 1))
        for table in ("sliding_sync_rooms", "sliding_sync_positions", "sliding_sync_connections"):
            await c.execute(f"DELETE FROM {table} WHERE connection_id IN ({marks})", *ids)

    async def delete_idle_connections(self, idle_before: int) -> int:
        rows = await self.db.fetch("SELECT connection_id FROM sliding_sync_connections WHERE last_used_ts < $1"
                                   " LIMIT 1000", idle_before)
        ids = [int(r["connection_id"]) for r in rows]
        if ids:
            async def txn(c: Connection) -> None:
                await self._delete_connections(c, ids)

            await self.db.run_transaction("sliding_sync_expire", txn)
        return len(ids)

    async def claim_position(self, user_id: str, device_id: str, conn_id: str, position_id: int) -> bool:
        """Whether the position is kept and this connection's; if so it is marked used (the client has
        it), in the same statement."""
        row = await self.db.fetchrow(
            "UPDATE sliding_sync_positions SET used = 1 WHERE position_id = $1 AND connection_id = ("
            "SELECT connection_id FROM sliding_sync_connections WHERE user_id = $2 AND device_id = $3"
            " AND conn_id = $4) RETURNING position_id", position_id, user_id, device_id, conn_id)
        return row is not None

    async def get_position(self, position_id: int) -> StoredPosition | None:
        """The position with its per-room view: its base's rows (those at or below the base, which
        `add_position` keeps as exactly the base's view) and its own. (Ownership is `claim_position`'s
        to check.)"""
        row = await self.db.fetchrow(
            "SELECT connection_id, token, lists, base_id FROM sliding_sync_positions WHERE position_id = $1",
            position_id)
        if row is None:
            return None
        connection_id = int(row["connection_id"])
        rows = await self.db.fetch(
            "SELECT room_id, status, sent_upto, config, lazy_members FROM sliding_sync_rooms"
            " WHERE connection_id = $1 AND (position_id <= $2 OR position_id = $3) ORDER BY position_id",
            connection_id, int(row["base_id"]), position_id)
        rooms = {r["room_id"]: RoomRecord(r["status"], int(r["sent_upto"]), r["config"],
                                          tuple(json_loads(r["lazy_members"]))) for r in rows}
        return StoredPosition(position_id, connection_id, row["token"], dict(json_loads(row["lists"])), rooms)

    async def add_position(self, connection_id: int, base: int, token: str, lists: dict[str, Any],
                           rooms: dict[str, RoomRecord], now: int) -> int | None:
        """A new position following `base`, with the rooms whose record changed; None if `base` is gone
        (the connection restarted) or the client continued from one of its successors since (this
        request's answer comes too late: the client gave it up).

        Kept afterwards: `base` and its successors (the new one, and those of other requests that
        continued from `base`: the client may use any of them, e.g. the answer of a long-poll it did
        not close; at most MAX_SIBLINGS). Everything before `base` is merged into its view: the rows
        at or below its own base, less those `base`'s rows replace; rows of dropped positions go."""

        async def txn(c: Connection) -> int | None:
            row = await c.fetchrow(
                "SELECT c.last_used_ts, p.base_id FROM sliding_sync_connections c JOIN sliding_sync_positions p"
                " ON p.connection_id = c.connection_id WHERE c.connection_id = $1 AND p.position_id = $2",
                connection_id, base)
            if row is None:
                return None
            grand_base = int(row["base_id"])
            successors = await c.fetch(
                "SELECT position_id, used FROM sliding_sync_positions WHERE connection_id = $1 AND base_id = $2"
                " ORDER BY position_id DESC", connection_id, base)
            if any(r["used"] for r in successors):
                return None  # the client went on from one of them: this answer comes too late
            siblings = [int(r["position_id"]) for r in successors]
            kept = [base, *siblings[:MAX_SIBLINGS - 1]]
            # Rows of the positions that go: those after `base`'s own base that are not kept (the
            # rows at or below it are `base`'s view, merged).
            await c.execute(f"DELETE FROM sliding_sync_rooms WHERE connection_id = $1 AND position_id > $2"
                            f" AND position_id NOT IN ({_marks(3, len(kept))})", connection_id, grand_base, *kept)
            await c.execute(f"DELETE FROM sliding_sync_positions WHERE connection_id = $1"
                            f" AND position_id NOT IN ({_marks(2, len(kept))})", connection_id, *kept)
            # Rows older than `base` that `base`'s rows replace.
            await c.execute(
                "DELETE FROM sliding_sync_rooms WHERE connection_id = $1 AND position_id < $2 AND room_id IN ("
                "SELECT room_id FROM sliding_sync_rooms WHERE connection_id = $1 AND position_id = $2)",
                connection_id, base)
            if now - int(row["last_used_ts"]) > LAST_USED_RESOLUTION_MS:
                await c.execute("UPDATE sliding_sync_connections SET last_used_ts = $2 WHERE connection_id = $1",
                                connection_id, now)
            return await self._insert_position(c, connection_id, token, lists, rooms, now, base)

        return await self.db.run_transaction("sliding_sync_add_position", txn)

    @staticmethod
    async def _insert_position(c: Connection, connection_id: int, token: str, lists: dict[str, Any],
                               rooms: dict[str, RoomRecord], now: int, base: int = 0) -> int:
        position_id = int(await c.fetchval(
            "INSERT INTO sliding_sync_positions (connection_id, token, lists, created_ts, base_id)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING position_id", connection_id, token, json_dumps(lists), now,
            base))
        if rooms:
            await c.executemany(
                "INSERT INTO sliding_sync_rooms (connection_id, position_id, room_id, status, sent_upto, config,"
                " lazy_members) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [(connection_id, position_id, room_id, r.status, r.sent_upto, r.config,
                  json_dumps(list(r.lazy_members))) for room_id, r in rooms.items()])
        return position_id

    # -- what the room lists need, in bulk ----------------------------------------------------------------
    async def get_bump_stamps(self, room_ids: Sequence[str], types: Sequence[str], upto: int) -> dict[str, int]:
        """Each room's newest event of one of `types` at or below `upto` (rooms without one are left
        out): one statement per chunk, each room one backwards walk of its (room_id, stream) index."""
        out: dict[str, int] = {}
        type_marks = _marks(2, len(types))
        for chunk in _chunks(list(room_ids)):
            room_marks = _marks(2 + len(types), len(chunk))
            rows = await self.db.fetch(
                "SELECT r.room_id, (SELECT e.stream_ordering FROM events e WHERE e.room_id = r.room_id"
                f" AND e.stream_ordering <= $1 AND e.type IN ({type_marks})"
                " ORDER BY e.stream_ordering DESC LIMIT 1) AS bump"
                f" FROM rooms r WHERE r.room_id IN ({room_marks})",
                upto, *types, *chunk)
            for r in rows:
                if r["bump"] is not None:
                    out[r["room_id"]] = int(r["bump"])
        return out

    async def get_state_event_ids(self, room_ids: Sequence[str], types: Sequence[str]) -> dict[str, dict[str, str]]:
        """room -> type -> event ID of the rooms' current state events of `types` (state key '')."""
        out: dict[str, dict[str, str]] = {}
        type_marks = _marks(1, len(types))
        for chunk in _chunks(list(room_ids)):
            rows = await self.db.fetch(
                "SELECT room_id, type, event_id FROM current_state_events"
                f" WHERE type IN ({type_marks}) AND state_key = '' AND room_id IN ({_marks(1 + len(types), len(chunk))})",
                *types, *chunk)
            for r in rows:
                out.setdefault(r["room_id"], {})[r["type"]] = r["event_id"]
        return out

    async def get_space_children(self, space_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """space -> (child room ID, event ID) of its current m.space.child state."""
        out: dict[str, list[tuple[str, str]]] = {}
        if not space_ids:
            return out
        rows = await self.db.fetch(
            "SELECT room_id, state_key, event_id FROM current_state_events WHERE type = 'm.space.child'"
            f" AND room_id IN ({_marks(1, len(space_ids))})", *space_ids)
        for r in rows:
            out.setdefault(r["room_id"], []).append((r["state_key"], r["event_id"]))
        return out

    async def get_member_counts(self, room_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """room -> membership -> how many members have it, in the rooms' current state."""
        out: dict[str, dict[str, int]] = {}
        for chunk in _chunks(list(room_ids)):
            rows = await self.db.fetch(
                "SELECT room_id, membership, COUNT(*) AS n FROM current_state_events"
                f" WHERE type = 'm.room.member' AND room_id IN ({_marks(1, len(chunk))})"
                " GROUP BY room_id, membership", *chunk)
            for r in rows:
                if r["membership"]:
                    out.setdefault(r["room_id"], {})[r["membership"]] = int(r["n"])
        return out

    async def get_heroes(self, room_ids: Sequence[str], user_id: str, limit: int) -> dict[str, list[str]]:
        """room -> event IDs of its first `limit` members other than `user_id` (by when their membership
        took effect) in its current state: joined or invited ones, or, in a room with none, those who
        left or were banned (Synapse's heroes). All the rooms in one statement per chunk."""
        out: dict[str, list[str]] = {}
        for chunk in _chunks(list(room_ids)):
            rows = await self.db.fetch(
                "SELECT room_id, event_id, current_member FROM (SELECT c.room_id, c.event_id, CASE WHEN"
                " c.membership IN ('join', 'invite') THEN 1 ELSE 0 END AS current_member, ROW_NUMBER() OVER ("
                " PARTITION BY c.room_id, c.membership IN ('join', 'invite') ORDER BY e.stream_ordering) AS n"
                " FROM current_state_events c JOIN events e ON e.event_id = c.event_id"
                f" WHERE c.room_id IN ({_marks(3, len(chunk))}) AND c.type = 'm.room.member' AND c.state_key <> $1"
                " AND c.membership IN ('join', 'invite', 'leave', 'ban')) AS ranked WHERE n <= $2"
                " ORDER BY room_id, n", user_id, limit, *chunk)
            current: dict[str, list[str]] = {}
            former: dict[str, list[str]] = {}
            for r in rows:
                (current if r["current_member"] else former).setdefault(r["room_id"], []).append(r["event_id"])
            out.update(former)
            out.update(current)  # a room's current members win over its former ones
        return out

    async def get_memberships(self, user_id: str) -> dict[str, tuple[str, str]]:
        """room -> (membership, event ID) of every current membership of the user."""
        rows = await self.db.fetch(
            "SELECT room_id, membership, event_id FROM current_state_events WHERE type = 'm.room.member'"
            " AND state_key = $1", user_id)
        return {r["room_id"]: (r["membership"], r["event_id"]) for r in rows if r["membership"]}

    async def get_forgotten(self, user_id: str) -> set[str]:
        rows = await self.db.fetch("SELECT room_id FROM room_forgotten WHERE user_id = $1", user_id)
        return {r["room_id"] for r in rows}

    async def get_room_tags(self, user_id: str) -> dict[str, dict[str, Any]]:
        """room -> the user's m.tag content's `tags` object."""
        rows = await self.db.fetch(
            "SELECT room_id, content FROM account_data WHERE user_id = $1 AND type = 'm.tag' AND room_id <> ''",
            user_id)
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            content = json_loads(r["content"])
            tags = content.get("tags") if isinstance(content, dict) else None
            if isinstance(tags, dict):
                out[r["room_id"]] = tags
        return out
