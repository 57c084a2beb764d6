"""One database interface over PostgreSQL (asyncpg) and the embedded SQLite default (aiosqlite).

Stores write SQL once, with PostgreSQL's `$1` placeholders; the SQLite backend rewrites them to `?1`.
Writes go through `run_transaction`, which retries on serialization failures and deadlocks so callers
never see a transient conflict.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

DB_TXN_DURATION = Histogram("hs_db_transaction_seconds", "Database transaction duration", ["name"])
DB_TXN_RETRIES = Counter("hs_db_transaction_retries_total", "Transactions retried after a conflict", ["name"])
DB_POOL_SIZE = Gauge("hs_db_pool_connections", "Database pool connections", ["state"])

_PLACEHOLDER = re.compile(r"\$(\d+)")
MAX_TXN_ATTEMPTS = 8


class Connection:
    """What a transaction function receives: execute/fetch on one connection inside one transaction."""

    engine: str

    async def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Database:
    engine: str

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def _transaction(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError
        yield

    def _is_retryable(self, exc: BaseException) -> bool:
        return False

    async def run_transaction(self, name: str, fn: Callable[[Connection], Awaitable[T]]) -> T:
        for attempt in range(MAX_TXN_ATTEMPTS):
            start = time.perf_counter()
            try:
                async with self._transaction() as conn:
                    return await fn(conn)
            except Exception as exc:
                if not self._is_retryable(exc) or attempt == MAX_TXN_ATTEMPTS - 1:
                    raise
                DB_TXN_RETRIES.labels(name).inc()
                logger.info("transaction %s conflicted (%s); retrying", name, exc)
                await asyncio.sleep(0.005 * (2**attempt))
            finally:
                DB_TXN_DURATION.labels(name).observe(time.perf_counter() - start)
        raise AssertionError("unreachable")

    # Single statements outside an explicit transaction (each its own transaction).
    async def execute(self, sql: str, *args: Any) -> None:
        async def f(c: Connection) -> None:
            await c.execute(sql, *args)

        await self.run_transaction("execute", f)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


# ---------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------
class _PgConnection(Connection):
    engine = "postgres"

    def __init__(self, conn: Any) -> None:
        self._c = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._c.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._c.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._c.fetch(sql, *args)]


class PostgresDatabase(Database):
    engine = "postgres"

    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 10) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(self.dsn, min_size=self.min_size, max_size=self.max_size)
        DB_POOL_SIZE.labels("max").set(self.max_size)
        pool = self.pool
        DB_POOL_SIZE.labels("open").set_function(lambda: pool.get_size())
        DB_POOL_SIZE.labels("idle").set_function(lambda: pool.get_idle_size())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    @asynccontextmanager
    async def _transaction(self):  # type: ignore[no-untyped-def]
        async with self.pool.acquire() as raw, raw.transaction():
            yield _PgConnection(raw)

    def _is_retryable(self, exc: BaseException) -> bool:
        import asyncpg

        return isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self.pool.acquire() as raw:
            return [dict(r) for r in await raw.fetch(sql, *args)]


# ---------------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _sqlite_sql(sql: str) -> str:
    """`$1` -> `?1` (cached: stores reuse a few hundred statement strings)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class _SqliteConnection(Connection):
    engine = "sqlite"

    def __init__(self, conn: Any) -> None:
        self._c = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._c.execute(_sqlite_sql(sql), args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._c.executemany(_sqlite_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._c.execute(_sqlite_sql(sql), args) as cur:
            rows = await cur.fetchall()
            cols = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(cols, r, strict=True)) for r in rows]


class SqliteDatabase(Database):
    """One connection in WAL mode; a lock serialises transactions, since SQLite has a single writer."""

    engine = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import aiosqlite

        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.conn.execute("PRAGMA journal_mode=WAL")
        await self.conn.execute("PRAGMA synchronous=NORMAL")
        await self.conn.execute("PRAGMA foreign_keys=OFF")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    @asynccontextmanager
    async def _transaction(self):  # type: ignore[no-untyped-def]
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConnection(self.conn)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await _SqliteConnection(self.conn).fetch(sql, *args)


def make_database(config: Any) -> Database:
    """Build the database for a `DatabaseConfig`."""
    if config.engine == "postgres":
        return PostgresDatabase(config.postgres_dsn, config.cp_min, config.cp_max)
    return SqliteDatabase(config.sqlite_path)
