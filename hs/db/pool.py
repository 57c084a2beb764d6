"""One database interface over PostgreSQL (asyncpg) and the embedded SQLite default (sqlite3 on a thread).

Stores write SQL once, with PostgreSQL's `$1` placeholders; the SQLite backend rewrites them to `?1`.
Writes go through `run_transaction`, which retries on serialization failures and deadlocks so callers
never see a transient conflict. At start-up a PostgreSQL that does not accept connections yet is
retried for a bounded time; what cannot be used at all is a `DatabaseStartupError`, one clear line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

DB_TXN_DURATION = Histogram("hs_db_transaction_seconds", "Database transaction duration", ["name"])
DB_TXN_RETRIES = Counter("hs_db_transaction_retries_total", "Transactions retried after a conflict", ["name"])
DB_POOL_SIZE = Gauge("hs_db_pool_connections", "Database pool connections", ["state"])

_PLACEHOLDER = re.compile(r"\$(\d+)")
MAX_TXN_ATTEMPTS = 8
# How often the embedded database copies its write-ahead log into the database file.
CHECKPOINT_INTERVAL_S = 1.0


# Start-up retries: the pause doubles from the first to the last, until the configured time is up.
STARTUP_RETRY_FIRST_S = 0.5
STARTUP_RETRY_MAX_S = 5.0


class DatabaseStartupError(Exception):
    """The database cannot be used: the message says what was tried, what went wrong and what to do,
    in one line for the admin (the command prints it and exits; a traceback would add nothing)."""


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
    description: str  # what and where, for messages (never a password)

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
        async def attempt() -> T:
            async with self._transaction() as conn:
                return await fn(conn)

        return await self._retrying(name, attempt)

    async def run_statement(self, name: str, sql: str, *args: Any) -> list[Row]:
        """One statement as its own transaction (a statement is atomic), retried like `run_transaction`:
        on PostgreSQL one round trip, where BEGIN and COMMIT would add two."""
        async def one(c: Connection) -> list[Row]:
            return await c.fetch(sql, *args)

        return await self.run_transaction(name, one)

    async def _retrying(self, name: str, attempt: Callable[[], Awaitable[T]]) -> T:
        for n in range(MAX_TXN_ATTEMPTS):
            start = time.perf_counter()
            try:
                return await attempt()
            except Exception as exc:
                if not self._is_retryable(exc) or n == MAX_TXN_ATTEMPTS - 1:
                    raise
                DB_TXN_RETRIES.labels(name).inc()
                logger.info("transaction %s conflicted (%s); retrying", name, exc)
                await asyncio.sleep(0.005 * (2**n))
            finally:
                DB_TXN_DURATION.labels(name).observe(time.perf_counter() - start)
        raise AssertionError("unreachable")

    # Single statements outside an explicit transaction (each its own transaction).
    async def execute(self, sql: str, *args: Any) -> None:
        await self.run_statement("execute", sql, *args)

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

    def __init__(self, dsn: str, min_size: int = 2, max_size: int = 10, *, startup_timeout_s: float = 0.0,
                 connect_timeout_s: float | None = None, keepalives: TcpKeepalives | None = None) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.startup_timeout_s = startup_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.keepalives = keepalives
        self.description = describe_dsn(dsn)
        self.pool: Any = None
        self._releases: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open the pool, retrying for `startup_timeout_s` while the server cannot be reached or is
        starting up; a refusal that waiting cannot cure (password, missing database) fails at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout_s
        pause = STARTUP_RETRY_FIRST_S
        while True:
            try:
                self.pool = await self._create_pool()
                break
            except DatabaseStartupError:
                raise
            except Exception as exc:
                if not _is_not_up_yet(exc):
                    raise DatabaseStartupError(
                        f"cannot use the {self.description}: {_one_line(exc)}{_hint(exc)}") from None
                left = deadline - loop.time()
                if left <= 0:
                    raise DatabaseStartupError(
                        f"cannot connect to the {self.description}: {_one_line(exc)}; gave up after"
                        f" {self.startup_timeout_s:g}s (database.startup_timeout)") from None
                wait = min(pause, left)
                logger.warning("cannot connect to the %s yet: %s; retrying in %.1fs (giving up in %.1fs)",
                               self.description, _one_line(exc), wait, left)
                await asyncio.sleep(wait)
                pause = min(pause * 2, STARTUP_RETRY_MAX_S)
        DB_POOL_SIZE.labels("max").set(self.max_size)
        pool = self.pool
        DB_POOL_SIZE.labels("open").set_function(lambda: pool.get_size())
        DB_POOL_SIZE.labels("idle").set_function(lambda: pool.get_idle_size())

    async def _create_pool(self) -> Any:
        import asyncpg

        options: dict[str, Any] = {}
        if self.connect_timeout_s is not None:
            options["timeout"] = self.connect_timeout_s
        if self.keepalives is not None:
            options["init"] = self.keepalives.apply
        # No idle-connection expiry: asyncpg arms and cancels a timer per acquire for it, on every
        # query; an idle pool of `max_size` connections costs PostgreSQL little.
        return await asyncpg.create_pool(self.dsn, min_size=self.min_size, max_size=self.max_size,
                                         reset=_keep_session, max_inactive_connection_lifetime=0, **options)

    async def close(self) -> None:
        if self.pool is not None:
            while self._releases:
                await asyncio.gather(*self._releases, return_exceptions=True)
            await self.pool.close()

    @asynccontextmanager
    async def _connection(self):  # type: ignore[no-untyped-def]
        """A pooled connection for single statements, handed back in the background: asyncpg's
        release runs in a task of its own (`asyncio.shield`) and awaiting it costs the caller event-loop
        turns, whatever else is ready running first, before a query's result reaches it."""
        raw = await self.pool.acquire()
        try:
            yield raw
        finally:
            task = asyncio.get_running_loop().create_task(self.pool.release(raw))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    @asynccontextmanager
    async def _transaction(self):  # type: ignore[no-untyped-def]
        async with self.pool.acquire() as raw, raw.transaction():
            yield _PgConnection(raw)

    def _is_retryable(self, exc: BaseException) -> bool:
        import asyncpg

        return isinstance(exc, asyncpg.SerializationError | asyncpg.DeadlockDetectedError)

    async def run_statement(self, name: str, sql: str, *args: Any) -> list[Row]:
        async def attempt() -> list[Row]:
            async with self._connection() as raw:
                return [dict(r) for r in await raw.fetch(sql, *args)]

        return await self._retrying(name, attempt)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as raw:
            return [dict(r) for r in await raw.fetch(sql, *args)]


# Nothing listening (yet): refused, reset, unreachable, or a Unix socket not created yet.
_NOT_LISTENING_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                         errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENOENT}


def _is_not_up_yet(exc: BaseException) -> bool:
    """Errors that waiting can cure: nothing listening yet (or a name not resolvable yet, as in a
    container network coming up), a server starting up or shutting down, a connection dropped during
    either, every connection slot taken for the moment. TLS failures, OSErrors too, are not."""
    import ssl

    import asyncpg

    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError
                  | asyncpg.ConnectionDoesNotExistError | socket.gaierror | TimeoutError):
        return True
    if isinstance(exc, ssl.SSLError) or not isinstance(exc, OSError):
        return False
    # asyncio joins the failures of a name with several addresses (localhost: ::1 and 127.0.0.1).
    return exc.errno in _NOT_LISTENING_ERRNOS or str(exc).startswith("Multiple exceptions")


def _hint(exc: BaseException) -> str:
    import asyncpg

    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return " (create it first, e.g. `createdb --owner=<user> <name>`, or fix database.args.database)"
    return ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def describe_dsn(dsn: str) -> str:
    """Where a connection URI points, for messages: host, port, database and user, never the password."""
    try:
        uri = urlsplit(dsn)
        query = parse_qs(uri.query)
        host = uri.hostname or query.get("host", ["localhost"])[0]
        port = uri.port or query.get("port", ["5432"])[0]
        database = unquote(uri.path.lstrip("/")) or "(default)"
        user = unquote(uri.username or "") or "(default)"
    except ValueError:
        return "PostgreSQL database"
    return f"PostgreSQL database {database!r} at {host}:{port} as user {user!r}"


class TcpKeepalives:
    """libpq's `keepalives*` parameters, which asyncpg lacks, set on each new connection's socket: a
    connection whose peer vanished (a NAT or firewall dropping idle flows) is found dead by the kernel
    instead of hanging a query."""

    def __init__(self, enabled: bool = True, idle_s: int | None = None, interval_s: int | None = None,
                 count: int | None = None) -> None:
        self.enabled = enabled
        self.idle_s = idle_s
        self.interval_s = interval_s
        self.count = count

    async def apply(self, conn: Any) -> None:
        sock = conn._transport.get_extra_info("socket")  # asyncpg offers no public handle on it
        if sock is None or sock.family == socket.AF_UNIX:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if self.enabled else 0)
        if not self.enabled:
            return
        for option, value in (("TCP_KEEPIDLE", self.idle_s), ("TCP_KEEPINTVL", self.interval_s),
                              ("TCP_KEEPCNT", self.count)):
            if value is not None and hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _keep_session(conn: Any) -> None:
    """What a released connection needs beyond asyncpg's own rollback of an open transaction: nothing.

    asyncpg's default reset runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release, an extra round trip that the releasing caller waits for (two per single-statement read).
    hs never leaves session state behind: no LISTEN, no session-level advisory locks (migrations take
    a transaction-scoped one), no cursors outside a transaction, no SET outside SET LOCAL.
    """


# ---------------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _sqlite_sql(sql: str) -> str:
    """`$1` -> `?1` (cached: stores reuse a few hundred statement strings)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class _SqliteConnection(Connection):
    """Statements on the SQLite connection, run directly: only ever used on the database thread.

    Its methods are coroutines that never suspend, so a whole transaction function can be driven to
    completion on the database thread (see `_drive`)."""

    engine = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    async def execute(self, sql: str, *args: Any) -> None:
        self._c.execute(_sqlite_sql(sql), args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._c.executemany(_sqlite_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return _sqlite_fetch(self._c, sql, args)


def _sqlite_fetch(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
    cur = conn.execute(_sqlite_sql(sql), args)
    try:
        rows = cur.fetchall()
        cols = [d[0] for d in cur.description] if cur.description else []
    finally:
        cur.close()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never suspends to completion, synchronously.

    Transaction functions only await the connection, whose SQLite methods never suspend; a function
    that awaits anything else (a lock, another query outside the transaction) is a bug, reported here
    rather than deadlocking the database thread."""
    coro = cast(Coroutine[Any, Any, T], awaitable)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a database transaction function awaited something other than its connection")


class SqliteDatabase(Database):
    """The embedded default: one SQLite connection in WAL mode, owned by one thread.

    Every read and every whole transaction is one job on that thread, so a transaction costs one hop
    between the event loop and the thread however many statements it runs (with a per-statement
    async driver such as aiosqlite a message send took 14 hops, ~4 ms here), and the thread's queue
    serialises transactions, as SQLite's single writer requires."""

    engine = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"SQLite database {path}"
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        # Checkpoints (copying the WAL into the database file, with an fsync) run on a connection and
        # thread of their own: left to SQLite, one runs inside whichever commit crosses 1000 WAL pages,
        # and that commit, with every job queued behind it on the thread, waits for the fsync.
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpoint_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._checkpointer: asyncio.Task[None] | None = None
        self._written = False

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None, "database not open"
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, conn)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=OFF")
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._thread, connect)
        except sqlite3.Error as e:
            raise DatabaseStartupError(f"cannot open the SQLite database {self.path}: {e}") from None
        await self._run(lambda conn: conn.execute("PRAGMA wal_autocheckpoint=0"))
        self._checkpoint_conn = await loop.run_in_executor(self._checkpoint_thread, connect)
        self._checkpointer = loop.create_task(self._checkpoint_periodically())

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            if self._written:
                self._written = False
                await self._checkpoint("PASSIVE")

    async def _checkpoint(self, mode: str) -> None:
        conn = self._checkpoint_conn
        assert conn is not None
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._checkpoint_thread, lambda: conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall())
        except sqlite3.Error as e:  # busy: the next round catches up
            logger.warning("sqlite checkpoint failed: %s", e)
            self._written = True

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            self._checkpointer = None
        if self._conn is not None:
            await self._run(lambda conn: conn.close())
            self._conn = None
        if self._checkpoint_conn is not None:
            await self._checkpoint("TRUNCATE")
            conn = self._checkpoint_conn
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread, conn.close)
            self._checkpoint_conn = None
        self._thread.shutdown(wait=True)
        self._checkpoint_thread.shutdown(wait=True)

    async def run_transaction(self, name: str, fn: Callable[[Connection], Awaitable[T]]) -> T:
        # One writer and one thread: there is no concurrent transaction to conflict with, so no retry.
        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _drive(fn(_SqliteConnection(conn)))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._written = True
            return result

        start = time.perf_counter()
        try:
            return await self._run(txn)
        finally:
            DB_TXN_DURATION.labels(name).observe(time.perf_counter() - start)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._run(lambda conn: _sqlite_fetch(conn, sql, args))


def make_database(config: Any) -> Database:
    """Build the database for a `DatabaseConfig`."""
    if config.engine == "postgres":
        args = config.args
        keepalives = None
        if any(getattr(args, k) is not None for k in
               ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")):
            keepalives = TcpKeepalives(args.keepalives != 0, args.keepalives_idle, args.keepalives_interval,
                                       args.keepalives_count)
        return PostgresDatabase(config.postgres_dsn, config.pool_min, config.pool_max,
                                startup_timeout_s=config.startup_timeout / 1000,
                                connect_timeout_s=args.connect_timeout, keepalives=keepalives)
    return SqliteDatabase(config.sqlite_path)
