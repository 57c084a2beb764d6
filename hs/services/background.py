"""Periodic housekeeping, run only by the instance named in `run_background_tasks_on`.

Transaction IDs make client retries idempotent; they are kept for a day (a client retrying later
than that is not retrying) so the tables do not grow without bound.
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
INTERVAL_S = 3600.0


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
            except Exception:
                logger.exception("background housekeeping failed")
            await asyncio.sleep(INTERVAL_S)

    async def prune_transaction_ids(self, older_than_ms: int = TXN_RETENTION_MS) -> None:
        cutoff = now_ms() - older_than_ms
        for table in ("event_txn_ids", "device_inbox_txns"):
            await self.hs.db.execute(f"DELETE FROM {table} WHERE inserted_ts < $1", cutoff)
