"""Periodic housekeeping, run only by the instance named in `run_background_tasks_on`.

Transaction IDs make client retries idempotent; they are kept for a day (a client retrying later
than that is not retrying) so the tables do not grow without bound. Stored notifications (one row
per notifying event, read by /notifications, pushers and unread recounts) are kept for 30 days, as
Synapse keeps push actions: a recount after a receipt older than that no longer counts what came
before the cut, and /notifications reaches back 30 days. Sliding sync connections idle for a week are
dropped (their clients start over with M_UNKNOWN_POS).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hs.db.stores.notifications import NotificationStore
from hs.db.stores.retention import RetentionStore
from hs.util import cancel_and_wait, now_ms

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
        self.retention = RetentionStore(hs.db)
        self.notifications = NotificationStore(hs.db)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune_transaction_ids()
                await self.prune_notifications()
                await self.expire_sliding_sync_connections()
            except Exception:
                logger.exception("background housekeeping failed")
            await asyncio.sleep(INTERVAL_S)

    async def prune_transaction_ids(self, older_than_ms: int = TXN_RETENTION_MS) -> None:
        await self.retention.delete_transaction_ids_before(now_ms() - older_than_ms)

    async def expire_sliding_sync_connections(self) -> int:
        """Drop sliding sync connections idle for a week (their clients start over); returns how many."""
        total = 0
        while dropped := await self.hs.sliding_sync.connections.expire():
            total += dropped
        return total

    async def prune_notifications(self, older_than_ms: int = NOTIFICATION_RETENTION_MS) -> int:
        """Delete stored notifications of events older than the retention; returns how many."""
        cutoff = await self.retention.position_before(now_ms() - older_than_ms)
        if cutoff is None:
            return 0
        return await self.notifications.delete_upto(cutoff, DELETE_BATCH)
