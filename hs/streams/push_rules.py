"""The push rules stream: changes to users' push rules, one writer (`stream_writers.push_rules`).

Every change gives the user a new stream position (/sync then sends `m.push_rules` in its account
data) and wakes that user's long-polls. Every process drops its cached rules for the named users.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hs.db.stores.push import PushStore
from hs.errors import MatrixError
from hs.streams.base import Stream
from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.server import HomeServer

T = TypeVar("T")


class PushRulesStream(Stream):
    NAME = "push_rules"

    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs, hs.config.stream_writers.push_rules)
        self.store = PushStore(hs.db)
        self.tracker: PositionTracker | None = None
        # Called with the user IDs whose rules changed (cache invalidation), in every process.
        # None means every user (after a replication outage).
        self.on_change: list[Callable[[list[str] | None], None]] = []

    async def setup(self) -> None:
        source = await make_position_source(self.hs.db, "push_rules", "push_rules_stream", "stream_id")
        maximum = await self.store.max_stream_id()
        # One writer: everything in the table is persisted.
        self.set_initial_positions(dict.fromkeys(self.writers, maximum))
        if self.is_writer:
            self.tracker = PositionTracker(source, maximum)

    async def catch_up(self) -> None:
        maximum = await self.store.max_stream_id()
        for callback in self.on_change:
            callback(None)
        for writer in self.writers:
            self.on_position(writer, maximum, everyone=True)

    def handle_message(self, msg: dict[str, Any]) -> None:
        users = list(msg.get("users", ()))
        for callback in self.on_change:
            callback(users)
        super().handle_message(msg)

    async def write(self, user_id: str, fn: Callable[[int], Awaitable[T]]) -> T:
        """Run `fn(stream_id)` (a store write that records the position) and tell every process.

        A result of False means nothing was written: the position stays unused and unpublished.
        """
        tracker = self.tracker
        if tracker is None:
            raise MatrixError(502, "M_UNKNOWN", f"push rules are written by {self.writers[0]}; HTTP "
                                                "replication to other writers is not available in this build")
        async with tracker.allocate() as pos:
            result = await fn(pos)
        if result is False:
            return result
        # This process at once (the published message may take a round trip through Redis).
        for callback in self.on_change:
            callback([user_id])
        await self.publish(tracker.persisted_upto, row_position=pos, users=[user_id])
        return result
