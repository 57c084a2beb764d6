"""The events stream: room events, sharded by room over the writers in `stream_writers.events`.

Positions come from one shared source (a PostgreSQL sequence), so they order events across writers.
With several writers each records its persisted-up-to position in `stream_positions`; a writer with
nothing in flight claims the sequence so far whenever another writer moves on, so the minimum over
writers — what readers serve — follows the busiest writer closely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.streams.base import Stream, stable_shard
from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.server import HomeServer

_UPSERT_POSITION = (
    "INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('events', $1, $2)"
    " ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position"
    " WHERE stream_positions.position < excluded.position"
)


class EventsStream(Stream):
    NAME = "events"

    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs, hs.config.stream_writers.events)
        self.tracker: PositionTracker | None = None

    async def setup(self) -> None:
        source = await make_position_source(self.hs.db, "events_stream", "events", "stream_ordering",
                                            local_if_single_writer=True, writers=len(self.writers))
        stored = await self.stored_positions()
        self.set_initial_positions(stored)
        if self.is_writer:
            self.tracker = PositionTracker(source, stored.get(self.hs.instance_name, 0))
            # Whatever was in flight when this writer last stopped is gone: claim the sequence so far.
            if len(self.writers) > 1:
                await self.tracker.advance_idle()
                await self._record_own_position()
            # If this writer died between committing a batch and announcing it, those rows were never
            # announced: `gap` tells readers their in-memory view of recent rooms and memberships
            # below this position is incomplete, so they read the database for it instead.
            await self.publish(self.tracker.persisted_upto, gap=True)

    async def stored_positions(self) -> dict[str, int]:
        """Each writer's durably recorded persisted-up-to position."""
        if len(self.writers) == 1:
            maximum = await self.hs.db.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events")
            return {self.writers[0]: int(maximum or 0)}
        rows = await self.hs.db.fetch(
            "SELECT instance_name, position FROM stream_positions WHERE stream_name = 'events'")
        return {r["instance_name"]: int(r["position"]) for r in rows}

    async def catch_up(self) -> None:
        """Apply every writer's recorded position (replication messages may have been lost) and wake
        every waiter so it re-reads what it missed."""
        for writer, position in (await self.stored_positions()).items():
            if writer in self.positions:
                self.on_position(writer, position, everyone=True)

    async def on_other_writer(self, writer: str) -> None:
        """Another writer moved on: if idle, claim the shared sequence so far and publish it."""
        if self.tracker is None or writer == self.hs.instance_name or len(self.writers) < 2:
            return
        if await self.tracker.advance_idle():
            position = await self._record_own_position()
            await self.publish(position)

    async def _record_own_position(self) -> int:
        assert self.tracker is not None
        position = self.tracker.persisted_upto
        await self.hs.db.execute(_UPSERT_POSITION, self.hs.instance_name, position)
        self.on_position(self.hs.instance_name, position)
        return position

    def writer_for_room(self, room_id: str) -> str:
        return self.writers[stable_shard(room_id, len(self.writers))]

    def is_writer_for_room(self, room_id: str) -> bool:
        return self.writer_for_room(room_id) == self.hs.instance_name
