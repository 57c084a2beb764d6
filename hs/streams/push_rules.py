"""The push rules stream: changes to users' push rules, one writer (`stream_writers.push_rules`).

Every change gives the user a new stream position (/sync then sends `m.push_rules` in its account
data) and wakes that user's long-polls. Every process drops its cached rules for the named users.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hs.db.stores.push import PushStore
from hs.streams.base import StreamContext, TableStream

T = TypeVar("T")


class PushRulesStream(TableStream):
    NAME = "push_rules"
    # Push rule reads are served anywhere; writes go to the push_rules writer.
    WRITE_GROUPS = ("pushrules",)
    SOURCE = "push_rules"
    TABLE = "push_rules_stream"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store: PushStore = ctx.push_store
        # Called with the user IDs whose rules changed (cache invalidation), in every process.
        # None means every user (after a replication outage).
        self.on_change: list[Callable[[list[str] | None], None]] = []

    async def stored_max(self) -> int:
        return int(await self.store.max_stream_id())

    async def catch_up(self) -> None:
        for callback in self.on_change:
            callback(None)  # rule changes may have been missed: drop every cached rule set
        await super().catch_up()

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
            raise self.not_writer()
        async with tracker.allocate() as pos:
            result = await fn(pos)
        if result is False:
            return result
        # This process at once (the published message may take a round trip through Redis).
        for callback in self.on_change:
            callback([user_id])
        await self.publish(tracker.persisted_upto, row_position=pos, users=[user_id])
        return result
