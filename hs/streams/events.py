"""The events stream: room events, sharded by room over the writers in `stream_writers.events`.

Positions come from one shared source (a PostgreSQL sequence), so they order events across writers.
With several writers each records its persisted-up-to position in `stream_positions` and readers keep
one position per writer: a room's events are served up to *its* writer's position (sync tokens carry
per-writer positions, hs/streams/tokens.py), so a writer that is down or slow holds back only its own
rooms. A writer with nothing in flight claims the sequence so far whenever another writer moves on,
every `IDLE_ADVANCE_SECONDS`, and after every replication reconnect, so the minimum over writers (what
tokens compact to, and what room-independent readers such as pushers follow) keeps up with the busiest
live writer without anybody having to wait for a message that was lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hs.db.stores.stream_positions import StreamPositionStore
from hs.streams.base import Stream, StreamContext, stable_shard
from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.streams.tokens import StreamToken

logger = logging.getLogger(__name__)
# How often an idle writer claims the shared sequence on its own (besides when another writer publishes).
IDLE_ADVANCE_SECONDS = 0.5



class EventsStream(Stream):
    NAME = "events"
    MULTI_WRITER = True

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.tracker: PositionTracker | None = None
        self.store = StreamPositionStore(ctx.db)
        self._idle_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[bool]] = set()

    async def setup(self) -> None:
        source = await make_position_source(self.ctx.db, "events_stream", "events", "stream_ordering",
                                            local_if_single_writer=True, writers=len(self.writers))
        stored = await self.stored_positions()
        self.set_initial_positions(stored)
        event_store = self.ctx.event_store
        event_store.writes_room = self.is_writer_for_room
        # This process was told of no event stored before now: everything up to the highest stored
        # position is read from the database, not from the (empty) memory of recent events. (The
        # minimum over writers is not enough: a writer ahead of it has events above it that a /sync
        # with a token from another worker would then look for in memory, and miss.)
        event_store.reset_membership_tracking(await self._highest_stored(stored))
        if self.is_writer:
            self.tracker = PositionTracker(source, stored.get(self.ctx.instance_name, 0))
            # Whatever was in flight when this writer last stopped is gone: claim the sequence so far.
            if len(self.writers) > 1:
                await self.tracker.advance_idle()
                await self._record_own_position()
            # If this writer died between committing a batch and announcing it, those rows were never
            # announced: `gap` tells readers their in-memory view of recent rooms and memberships
            # below this position is incomplete, so they read the database for it instead.
            await self.publish(self.tracker.persisted_upto, gap=True)
            if len(self.writers) > 1:
                self._idle_task = asyncio.get_running_loop().create_task(self._advance_periodically())

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = list(self._background)
        if self._idle_task is not None:
            tasks.append(self._idle_task)
            self._idle_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _advance_periodically(self) -> None:
        """Heal by itself: an announcement another writer made while this one could not hear it (a
        Redis reconnect) must not leave this writer's position, and so the minimum, behind."""
        while True:
            await asyncio.sleep(IDLE_ADVANCE_SECONDS)
            try:
                await self.advance_if_idle()
            except Exception as e:  # the database is briefly unreachable: try again next round
                logger.warning("events stream: idle advance failed (%s)", e)

    async def stored_positions(self) -> dict[str, int]:
        """Each writer's durably recorded persisted-up-to position."""
        if len(self.writers) == 1:
            return {self.writers[0]: await self.ctx.event_store.get_max_stream_ordering()}
        return await self.store.get_positions(self.NAME)

    async def _highest_stored(self, stored: dict[str, int]) -> int:
        """The highest event position in the database (a single writer's position is just that)."""
        if len(self.writers) == 1:
            return max(stored.values())
        return await self.ctx.event_store.get_max_stream_ordering()

    async def catch_up(self) -> None:
        """Apply every writer's recorded position (replication messages may have been lost) and wake
        every waiter so it re-reads what it missed. What the messages kept up to date in memory (recent
        events and memberships, unread counts) is forgotten and read from the database again."""
        self.ctx.push_store.unread.clear()
        stored = await self.stored_positions()
        self.ctx.event_store.reset_membership_tracking(await self._highest_stored(stored))
        for writer, position in stored.items():
            if writer in self.positions:
                self.on_position(writer, position, everyone=True)
        if self.tracker is not None:
            # Re-announce: readers that missed our last message while Redis was away hear it now.
            if not await self.advance_if_idle():
                await self.publish(self.tracker.persisted_upto)

    def handle_message(self, msg: dict[str, Any]) -> None:
        """A writer persisted a batch: keep the event store's view of recent events, memberships and
        redactions, and the unread counts, right, then apply the position and wake the listeners."""
        event_store = self.ctx.event_store
        redacts = msg.get("redacts") or []
        for event_id in [redacts] if isinstance(redacts, str) else redacts:
            event_store.invalidate_event(event_id)
        if msg.get("gap"):
            event_store.reset_membership_tracking(int(msg["position"]))
        last = int(msg.get("row_position") or msg["position"])
        events = msg.get("events")
        rooms = msg.get("rooms") or ()
        own = msg.get("instance") == self.ctx.instance_name
        if not own:  # our own writes set the counts they change
            for room_id in rooms:
                self.ctx.push_store.unread.invalidate_room(room_id)
        first = int(msg.get("first_position") or last)
        for room_id in rooms:
            event_store.on_room_events(room_id, first, last,
                                       [(int(pos), str(eid)) for pos, eid in events] if events else None)
        users = msg.get("users")
        if users:
            event_store.on_membership_change(list(users), last)
        super().handle_message(msg)
        if self.tracker is not None and not own:
            # Another writer moved on: if idle, claim the shared sequence so far and publish it.
            task = asyncio.get_running_loop().create_task(self.advance_if_idle())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def advance_if_idle(self) -> bool:
        """With nothing in flight, claim the shared sequence so far, record and publish it."""
        if self.tracker is None or len(self.writers) < 2:
            return False
        if not await self.tracker.advance_idle():
            return False
        position = await self._record_own_position()
        await self.publish(position)
        return True

    async def _record_own_position(self) -> int:
        assert self.tracker is not None
        position = self.tracker.persisted_upto
        await self.store.record_position(self.NAME, self.ctx.instance_name, position)
        self.on_position(self.ctx.instance_name, position)
        return position

    def writer_for_room(self, room_id: str) -> str:
        if len(self.writers) == 1:
            return self.writers[0]
        return self.writers[stable_shard(room_id, len(self.writers))]

    def is_writer_for_room(self, room_id: str) -> bool:
        return self.writer_for_room(room_id) == self.ctx.instance_name

    # -- per-room views of a token ------------------------------------------------------------------------
    def room_position(self, token: StreamToken, room_id: str) -> int:
        """The position `token` stands at for one room: its writer's (all the room's events are)."""
        if len(self.writers) == 1:
            return token.get(self.NAME)
        return token.writer_position(self.NAME, self.writer_for_room(room_id))

    def in_range(self, room_id: str, position: int, after: StreamToken, upto: StreamToken) -> bool:
        """Whether an event of `room_id` at `position` lies in the token range (after, upto]."""
        return self.room_position(after, room_id) < position <= self.room_position(upto, room_id)

    def rooms_by_writer(self, room_ids: Iterable[str]) -> dict[str, list[str]]:
        """The rooms grouped by their writer, for range queries asked once per writer."""
        out: dict[str, list[str]] = {}
        for room_id in room_ids:
            out.setdefault(self.writer_for_room(room_id), []).append(room_id)
        return out

    @staticmethod
    def bounds(after: StreamToken, upto: StreamToken) -> tuple[int, int]:
        """(low, high) covering every room's range (after, upto]: rows read between them are then
        filtered with `in_range`."""
        return after.get("events"), upto.maximum("events")
