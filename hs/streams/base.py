"""A stream: a totally ordered log with integer positions, written by its configured writer(s).

Each process keeps, per writer, the position up to which it has seen that writer's rows committed. The
stream's *current* position is the minimum over writers: everything at or below it is persisted and
visible. A notification about a row waits until its writer's position reaches the row, so a long-poll
is never woken for (and never returns) an event it then cannot see.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import Gauge

from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.config import HomeserverConfig
    from hs.db.pool import Database
    from hs.db.stores.events import EventStore
    from hs.db.stores.push import PushStore
    from hs.replication.http_client import ReplicationClient
    from hs.replication.transport import ReplicationTransport
    from hs.streams.notifier import Notifier

logger = logging.getLogger(__name__)
STREAM_POSITION = Gauge("hs_stream_position", "Current stream position", ["stream", "writer"])


@lru_cache(maxsize=65536)
def stable_shard(key: str, n: int) -> int:
    """The same shard for the same key in every process and across restarts (unlike `hash()`)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


@dataclass
class StreamContext:
    """What a stream works with: its process's identity, config, database and replication, the
    notifier it wakes, and the stores whose caches its messages keep right. Not the HomeServer: a
    stream calls no service."""

    instance_name: str
    config: HomeserverConfig
    db: Database
    replication: ReplicationTransport
    notifier: Notifier
    event_store: EventStore
    push_store: PushStore
    # Built on first use (it needs the HomeServer): HTTP calls to another instance's stream writer.
    replication_client: Callable[[], ReplicationClient]


class Stream:
    """One stream: its writers' positions in this process, what it tells the notifier, and (in its
    subclass) how it writes, replicates and catches up. Registered in hs/streams/registry.py."""

    NAME: ClassVar[str]
    # Whether `stream_writers` may name several writers (each with its own positions).
    MULTI_WRITER: ClassVar[bool] = False
    # Route groups (hs/roles/routes.py) whose writes are handled by this stream's writer: a worker
    # that is not the writer forwards them there.
    WRITE_GROUPS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.writers = list(ctx.config.stream_writers.writers_of(self.NAME))
        self.positions: dict[str, int] = dict.fromkeys(self.writers, 0)
        # (position, writer, users, rooms, everyone): notifications held back until their writer's
        # position reaches them (the rows they are about are then readable here).
        self._pending: list[tuple[int, str, frozenset[str], frozenset[str], bool]] = []

    @property
    def is_writer(self) -> bool:
        return self.ctx.instance_name in self.writers

    # -- lifecycle (every process; hs/server.py runs these for every registered stream) ------------------
    def subscribe(self) -> None:
        """Register for this stream's replication messages (before the transport starts)."""
        self.ctx.replication.subscribe(self.NAME, self.handle_message)

    async def setup(self) -> None:
        """Read the persisted positions; a writer also gets ready to allocate."""
        self.set_initial_positions(dict.fromkeys(self.writers, 0))

    async def catch_up(self) -> None:
        """After replication messages may have been lost: re-read positions, wake every waiter."""

    async def close(self) -> None:
        """Stop whatever the stream runs in the background."""

    def current_position(self) -> int:
        """The minimum over writers: every row at or below it is persisted, whoever wrote it."""
        return min(self.positions.values()) if self.positions else 0

    def writer_position(self, writer: str) -> int:
        """How far this process has seen `writer`'s own rows persisted."""
        return self.positions.get(writer, self.current_position())

    def set_initial_positions(self, positions: dict[str, int]) -> None:
        for writer in self.writers:
            self.positions[writer] = positions.get(writer, self.positions.get(writer, 0))
        self._update_notifier()

    def on_position(self, writer: str, position: int, users: frozenset[str] = frozenset(),
                    rooms: frozenset[str] = frozenset(), everyone: bool = False,
                    notify_at: int | None = None) -> None:
        """Apply a writer's persisted-up-to position (local or from replication) and wake waiters.

        `notify_at` is the position of the row the users/rooms are about; it can be above `position`
        when the writer committed it while an earlier position is still in flight.
        """
        if writer not in self.positions:
            logger.warning("stream %s: position from unknown writer %s", self.NAME, writer)
            return
        if position > self.positions[writer]:
            self.positions[writer] = position
            STREAM_POSITION.labels(self.NAME, writer).set(position)
        if users or rooms or everyone:
            self._pending.append((notify_at if notify_at is not None else position, writer, users, rooms,
                                  everyone))
        self._update_notifier()

    def _update_notifier(self) -> None:
        current = self.current_position()
        notifier = self.ctx.notifier
        writers = self.positions if len(self.positions) > 1 else None
        if not self._pending:
            notifier.advance(self.NAME, current, writers)
            return
        ready = [p for p in self._pending if p[0] <= self.positions.get(p[1], current)]
        if len(ready) < len(self._pending):
            self._pending = [p for p in self._pending if p[0] > self.positions.get(p[1], current)]
        else:
            self._pending = []
        if not ready:
            notifier.advance(self.NAME, current, writers)
            return
        users: set[str] = set()
        rooms: set[str] = set()
        everyone = False
        for _pos, _writer, u, r, e in ready:
            users |= u
            rooms |= r
            everyone = everyone or e
        notifier.notify(self.NAME, current, users=users, rooms=rooms, everyone=everyone, writers=writers)

    def not_writer(self) -> Exception:
        """A write reached a process that does not own this stream. Client requests are forwarded to
        the writer before they get here (hs/app.py), so this means a misrouted internal call."""
        from hs.errors import internal_error

        return internal_error(f"{self.NAME} is written by {self.writers[0]}, not "
                              f"{self.ctx.instance_name}; the write should have been forwarded")

    async def publish(self, position: int, **data: Any) -> None:
        """Tell every process (this one included) that this writer has persisted up to `position`."""
        await self.ctx.replication.publish(self.NAME, self.ctx.instance_name, position, data)

    def handle_message(self, msg: dict[str, Any]) -> None:
        self.on_position(msg["instance"], int(msg["position"]), frozenset(msg.get("users", ())),
                              frozenset(msg.get("rooms", ())), bool(msg.get("everyone", False)),
                         msg.get("row_position"))


class TableStream(Stream):
    """A single-writer stream whose rows carry their position in one table column, so the highest
    stored position is what every process may serve (after start, or after a replication gap).

    Subclasses name the position source and the table, and say how to read the highest position."""

    SOURCE: ClassVar[str]
    TABLE: ClassVar[str]
    COLUMN: ClassVar[str] = "stream_id"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.tracker: PositionTracker | None = None

    async def stored_max(self) -> int:
        raise NotImplementedError

    async def setup(self) -> None:
        source = await make_position_source(self.ctx.db, self.SOURCE, self.TABLE, self.COLUMN)
        maximum = await self.stored_max()
        self.set_initial_positions(dict.fromkeys(self.writers, maximum))
        if self.is_writer:
            self.tracker = PositionTracker(source, maximum)

    async def catch_up(self) -> None:
        maximum = await self.stored_max()
        for writer in self.writers:
            self.on_position(writer, maximum, everyone=True)
