"""Sliding sync connections and positions: what `pos` names, and what each position had sent.

`pos` is the decimal ID of a stored position (hs/db/stores/sliding_sync.py), opaque to clients. A
position belongs to one connection (user, device, `conn_id`) and records the stream token its response
covered, a digest of each list's rooms, and per room what had been sent: "live" rooms are up to date at
the token, "previously" sent rooms up to their own `sent_upto`, with the config (membership,
required_state, timeline_limit) they were sent with. Everything is in the database, so the next request
may land on any sync worker; positions are immutable once written, so each process caches them.

Kept of a connection: the position the client last continued from and the answers to requests that
continued from it (the client may retry it, its answer lost, or have two requests out from it, e.g. a
long-poll it did not close: it may go on from any of them). Once it goes on from one, the others go.
An older or unknown `pos` is 400 M_UNKNOWN_POS and the client starts a new connection. A position a
request continued from is marked used: the client has it, so the late answer of a request from the
position before (Element X drops its long-poll whenever its lists change) is refused rather than kept.
Connections idle for a week are dropped by the background tasks (`expire`), and a device keeps
at most MAX_CONNECTIONS_PER_DEVICE (the least recently used go when a new one starts).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.db.stores.sliding_sync import RoomRecord, SlidingSyncStore, StoredPosition
from hs.errors import unknown_pos
from hs.streams.tokens import InvalidToken, StreamToken
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

IDLE_EXPIRY_MS = 7 * 24 * 3600 * 1000
MAX_POS_LENGTH = 20


@dataclass
class Connection:
    """One request's view of its connection: the position it continues from (none for a new one)."""

    connection_id: int | None  # None: a new connection, not written down yet
    base: int | None
    token: StreamToken | None
    lists: dict[str, Any] = field(default_factory=dict)
    rooms: dict[str, RoomRecord] = field(default_factory=dict)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Connections:
    def __init__(self, hs: HomeServer) -> None:
        self.store = SlidingSyncStore(hs.db)
        self._positions: LruCache[int, StoredPosition] = LruCache(1000, name="services.sliding_sync.connections.self._positions")

    async def open(self, user_id: str, device_id: str | None, conn_id: str, pos: str | None) -> Connection:
        """The connection a request continues (`pos`), or a new one (no `pos`), written down by `start`
        (which replaces any connection of the same key) and given its first position by `save`."""
        if pos is None:
            return Connection(None, None, None)
        if not pos.isascii() or not pos.isdigit() or len(pos) > MAX_POS_LENGTH:
            raise unknown_pos()
        position_id = int(pos)
        if position_id >= 2 ** 63:
            raise unknown_pos()
        # Whether it is still kept and theirs (a cached one may have been dropped since).
        if not await self.store.claim_position(user_id, device_id or "", conn_id, position_id):
            self._positions.pop(position_id)
            raise unknown_pos()
        stored = self._positions.get(position_id)
        if stored is None:
            stored = await self.store.get_position(position_id)
            if stored is None:
                raise unknown_pos()
            self._positions.set(position_id, stored)
        try:
            token = StreamToken.decode(stored.token)
        except InvalidToken:
            raise unknown_pos() from None
        return Connection(stored.connection_id, position_id, token, dict(stored.lists), dict(stored.rooms))

    async def start(self, user_id: str, device_id: str | None, conn_id: str) -> int:
        """Write down a new connection (replacing any of the same key), before its first position: a
        request for a new connection runs this while it computes its response."""
        return await self.store.start_connection(user_id, device_id or "", conn_id, _now_ms())

    async def save(self, conn: Connection, started: Awaitable[int] | None, token: StreamToken,
                   lists: dict[str, Any], changed: dict[str, RoomRecord]) -> str:
        """A new position after `conn`'s base with the rooms whose record changed; returns its `pos`.
        `started`: for a new connection, `start`'s result."""
        now = _now_ms()
        encoded = token.encode()
        if conn.connection_id is None or conn.base is None:
            assert started is not None
            connection_id = await started
            position_id = await self.store.first_position(connection_id, encoded, lists, changed, now)
        else:
            connection_id = conn.connection_id
            added = await self.store.add_position(connection_id, conn.base, encoded, lists, changed, now)
            if added is None:
                raise unknown_pos("The connection moved on or was restarted by another request")
            position_id = added
        rooms = {**conn.rooms, **changed}
        self._positions.set(position_id, StoredPosition(position_id, connection_id, encoded, lists, rooms))
        return str(position_id)

    async def expire(self) -> int:
        """Drop connections idle for longer than a week (up to a batch; the background tasks call this
        until it finds none); returns how many."""
        return await self.store.delete_idle_connections(_now_ms() - IDLE_EXPIRY_MS)
