"""Answers to other servers' transactions, kept a day so that retries are answered, not re-processed;
and the cluster-wide lock that keeps one origin's transactions one at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hs.db.pool import Database
from hs.util import json_dumps, json_loads, now_ms

# Synapse keeps received transaction IDs for a day as well.
KEEP_MS = 24 * 3600 * 1000
# Connections of the origin-lock pool: at most this many origins' transactions run at once in one
# process (a further one waits for a connection). Separate from the main pool, whose connections keep
# their session (no advisory-unlock on release) and which the transactions themselves need.
ORIGIN_LOCK_CONNECTIONS = 20


class InboundTransactionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._last_prune = 0
        self._lock_pool: Any = None
        self._lock_pool_opening = asyncio.Lock()

    @asynccontextmanager
    async def origin_lock(self, origin: str) -> AsyncIterator[None]:
        """Hold the cluster-wide lock of `origin`'s transactions (PostgreSQL: a session advisory lock on
        a dedicated connection, held until the block ends; a process that dies drops its connection and
        with it the lock). On SQLite there is one process: its in-process lock is enough, nothing here."""
        if self.db.engine != "postgres":
            yield
            return
        pool = await self._locks()
        async with pool.acquire() as raw:
            await raw.execute("SELECT pg_advisory_lock(hashtext('hs_fed_txn:' || $1))", origin)
            try:
                yield
            finally:
                await raw.execute("SELECT pg_advisory_unlock(hashtext('hs_fed_txn:' || $1))", origin)

    async def _locks(self) -> Any:
        async with self._lock_pool_opening:
            if self._lock_pool is None:
                import asyncpg

                dsn = getattr(self.db, "dsn")  # noqa: B009 - PostgresDatabase only
                # (asyncpg's default reset on release runs pg_advisory_unlock_all: nothing outlives
                # a hold. Idle connections close after a minute.)
                self._lock_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=ORIGIN_LOCK_CONNECTIONS,
                                                            max_inactive_connection_lifetime=60.0)
            return self._lock_pool

    async def close(self) -> None:
        """Close the lock pool (at the server's stop)."""
        if self._lock_pool is not None:
            pool, self._lock_pool = self._lock_pool, None
            await pool.close()

    async def get_response(self, origin: str, txn_id: str) -> Any | None:
        raw = await self.db.fetchval(
            "SELECT response_json FROM federation_inbound_transactions WHERE origin = $1 AND txn_id = $2",
            origin, txn_id)
        return None if raw is None else json_loads(raw)

    async def set_response(self, origin: str, txn_id: str, response: Any) -> None:
        now = now_ms()
        await self.db.execute(
            "INSERT INTO federation_inbound_transactions (origin, txn_id, response_json, received_ts)"
            " VALUES ($1,$2,$3,$4) ON CONFLICT (origin, txn_id) DO NOTHING",
            origin, txn_id, json_dumps(response), now)
        if now - self._last_prune > 3600 * 1000:
            self._last_prune = now
            await self.db.execute("DELETE FROM federation_inbound_transactions WHERE received_ts < $1", now - KEEP_MS)
