"""The account data stream: users' global and per-room config (incl. m.tag), one writer.

Every write gives the (user, room, type) row a new stream position; /sync returns the rows of the
user whose position is in its range. A write wakes only that user's long-polls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hs.db.stores.account_data import AccountDataStore
from hs.db.stores.ignored_users import IgnoredUsersStore
from hs.streams.base import StreamContext, TableStream
from hs.streams.positions import PositionTracker
from hs.util import KeyedLocks

Content = dict[str, Any]


class AccountDataStream(TableStream):
    NAME = "account_data"
    WRITE_GROUPS = ("account_data",)
    SOURCE = "account_data"
    TABLE = "account_data"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store = AccountDataStore(ctx.db)
        # Read-modify-write updates (tags) of one user's room are serialised in the (single) writer.
        self._locks = KeyedLocks()

    async def setup(self) -> None:
        await super().setup()
        if self.is_writer:
            # Ignore lists stored before the ignore index existed join it before any write can change them.
            await IgnoredUsersStore(self.ctx.db).backfill_if_pending()

    async def stored_max(self) -> int:
        return int(await self.store.max_stream_id())

    def _require_writer(self) -> PositionTracker:
        if self.tracker is None:
            raise self.not_writer()
        return self.tracker

    async def put(self, user_id: str, room_id: str, data_type: str, content: Content) -> int:
        """Store the content (room_id '' for global data) and tell every process; returns its position."""
        tracker = self._require_writer()
        async with tracker.allocate() as pos:
            await self.store.put(user_id, room_id, data_type, content, pos)
        await self.publish(tracker.persisted_upto, row_position=pos, users=[user_id])
        return pos

    async def update(self, user_id: str, room_id: str, data_type: str,
                     change: Callable[[Content | None], Content | None]) -> bool:
        """Read, change and write back one row atomically with respect to other updates of it.

        `change` returns the new content, or None to leave the row as it is; returns whether it wrote.
        """
        self._require_writer()
        async with self._locks.lock(f"{user_id}\n{room_id}\n{data_type}"):
            current = await self.store.get(user_id, room_id, data_type)
            result = change(current)
            if result is None:
                return False
            await self.put(user_id, room_id, data_type, result)
            return True

    async def set(self, user_id: str, room_id: str, data_type: str, content: Content) -> None:
        await self.update(user_id, room_id, data_type, lambda _current: content)
