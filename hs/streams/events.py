"""The events stream: room events, sharded by room over the writers in `stream_writers.events`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.streams.base import Stream, stable_shard
from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.server import HomeServer


class EventsStream(Stream):
    NAME = "events"

    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs, hs.config.stream_writers.events)
        self.tracker: PositionTracker | None = None

    async def setup(self) -> None:
        db = self.hs.db
        source = await make_position_source(db, "events_stream", "events", "stream_ordering")
        rows = await db.fetch("SELECT instance_name, position FROM stream_positions WHERE stream_name = 'events'")
        stored = {r["instance_name"]: int(r["position"]) for r in rows}
        maximum = int(await db.fetchval("SELECT COALESCE(MAX(stream_ordering), 0) FROM events") or 0)
        if len(self.writers) == 1:
            # One writer: everything in the table is persisted.
            stored = {self.writers[0]: maximum}
        self.set_initial_positions(stored)
        if self.is_writer:
            start = stored.get(self.hs.instance_name, maximum if len(self.writers) == 1 else 0)
            self.tracker = PositionTracker(source, start)

    async def catch_up(self) -> None:
        """Apply every writer's persisted position from the database (messages may have been lost)."""
        rows = await self.hs.db.fetch(
            "SELECT instance_name, position FROM stream_positions WHERE stream_name = 'events'")
        for r in rows:
            if r["instance_name"] in self.positions:
                self.on_position(r["instance_name"], int(r["position"]), everyone=True)

    def writer_for_room(self, room_id: str) -> str:
        return self.writers[stable_shard(room_id, len(self.writers))]

    def is_writer_for_room(self, room_id: str) -> bool:
        return self.writer_for_room(room_id) == self.hs.instance_name
