"""Periodic housekeeping, run only by the instance named in `run_background_tasks_on`.

Transaction IDs make client retries idempotent; they are kept for a day (a client retrying later
than that is not retrying) so the tables do not grow without bound. Stored notifications (one row
per notifying event, read by /notifications, pushers and unread recounts) are kept for 30 days, as
Synapse keeps push actions: a recount after a receipt older than that no longer counts what came
before the cut, and /notifications reaches back 30 days.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

TXN_RETENTION_MS = 24 * 3600 * 1000
NOTIFICATION_RETENTION_MS = 30 * 24 * 3600 * 1000
INTERVAL_S = 3600.0
DELETE_BATCH = 10_000


class BackgroundTasks:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune_transaction_ids()
                await self.prune_notifications()
            except Exception:
                logger.exception("background housekeeping failed")
            await asyncio.sleep(INTERVAL_S)

    async def prune_transaction_ids(self, older_than_ms: int = TXN_RETENTION_MS) -> None:
        cutoff = now_ms() - older_than_ms
        for table in ("event_txn_ids", "device_inbox_txns"):
            await self.hs.db.execute(f"DELETE FROM {table} WHERE inserted_ts < $1", cutoff)

    async def prune_notifications(self, older_than_ms: int = NOTIFICATION_RETENTION_MS) -> int:
        """Delete stored notifications of events older than the retention; returns how many."""
        cutoff = await self._position_before(now_ms() - older_than_ms)
        if cutoff is None:
            return 0
        deleted = 0
        while True:
            # In batches, by position (indexed), so no transaction holds many row locks for long.
            upper = await self.hs.db.fetchval(
                "SELECT MAX(stream_ordering) FROM (SELECT stream_ordering FROM event_notifications"
                " WHERE stream_ordering <= $1 ORDER BY stream_ordering LIMIT $2) AS batch", cutoff, DELETE_BATCH)
            if upper is None:
                return deleted
            count = await self.hs.db.fetchval(
                "SELECT COUNT(*) FROM event_notifications WHERE stream_ordering <= $1", upper)
            await self.hs.db.execute("DELETE FROM event_notifications WHERE stream_ordering <= $1", upper)
            deleted += int(count or 0)
            if int(upper) >= cutoff:
                return deleted

    async def _position_before(self, ts: int) -> int | None:
        """The highest event position whose event is older than `ts` (None: none is), found by
        bisecting positions over the primary key: local events' timestamps grow with their positions
        (an event from a wrong clock only moves the cut a little)."""
        db = self.hs.db
        lo = await db.fetchval("SELECT MIN(stream_ordering) FROM events")
        hi = await db.fetchval("SELECT MAX(stream_ordering) FROM events")
        if lo is None or hi is None:
            return None
        lo, hi = int(lo), int(hi)

        async def ts_at(position: int) -> int:
            value = await db.fetchval("SELECT origin_server_ts FROM events WHERE stream_ordering >= $1"
                                      " ORDER BY stream_ordering LIMIT 1", position)
            return int(value) if value is not None else 2 ** 62

        if await ts_at(lo) >= ts:
            return None
        while lo < hi:  # invariant: the event at or after `lo` is older than ts
            mid = (lo + hi + 1) // 2
            if await ts_at(mid) < ts:
                lo = mid
            else:
                hi = mid - 1
        return lo
