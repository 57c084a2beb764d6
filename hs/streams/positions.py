"""Stream position allocation and the "persisted up to" watermark of one writer.

A writer may allocate positions 5 and 6 for two rooms and commit 6 first. Readers must never be told
6 before 5 is committed, or a /sync could skip event 5 forever. `PositionTracker` hands out positions
and reports the highest position below which nothing is still in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from hs.db.pool import Database


class PositionSource:
    """Where new positions come from: a PostgreSQL sequence (shared by writers) or a local counter."""

    async def next(self) -> int:
        raise NotImplementedError

    async def last(self) -> int:
        """The highest position ever handed out (by anybody)."""
        raise NotImplementedError

    async def next_many(self, n: int) -> list[int]:
        return [await self.next() for _ in range(n)]


class LocalCounter(PositionSource):
    def __init__(self, start: int) -> None:
        self._value = start

    async def next(self) -> int:
        self._value += 1
        return self._value

    async def last(self) -> int:
        return self._value


class PostgresSequence(PositionSource):
    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self._name = name

    async def setup(self, minimum: int) -> None:
        await self._db.execute(f"CREATE SEQUENCE IF NOT EXISTS {self._name}")
        current = await self.last()
        if current < minimum:
            await self._db.fetchval(f"SELECT setval('{self._name}', $1)", minimum)

    async def next(self) -> int:
        return int(await self._db.fetchval(f"SELECT nextval('{self._name}')"))

    async def next_many(self, n: int) -> list[int]:
        rows = await self._db.fetch(f"SELECT nextval('{self._name}') AS v FROM generate_series(1, $1)", n)
        return sorted(int(r["v"]) for r in rows)

    async def last(self) -> int:
        """The highest position handed out. A sequence never used yet reports its start value as
        `last_value` before `nextval` has returned it (`is_called` false): that value is still to come."""
        return int(await self._db.fetchval(
            f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {self._name}"))


async def make_position_source(db: Database, name: str, table: str, column: str,
                               local_if_single_writer: bool = False, writers: int = 1) -> PositionSource:
    """A sequence on PostgreSQL (shared by several writers); a counter from MAX(column) otherwise.

    `local_if_single_writer`: the table never loses its highest rows, so with one writer a local
    counter is exact even on PostgreSQL, and saves a round trip per allocation."""
    maximum = int(await db.fetchval(f"SELECT COALESCE(MAX({column}), 0) FROM {table}") or 0)
    if db.engine == "postgres" and not (local_if_single_writer and writers == 1):
        seq = PostgresSequence(db, f"{name}_seq")
        await seq.setup(max(maximum, 1))
        return seq
    return LocalCounter(maximum)


class PositionTracker:
    """Allocates positions for one writer and tracks its persisted-up-to watermark."""

    def __init__(self, source: PositionSource, start: int) -> None:
        self._source = source
        self._in_flight: set[int] = set()
        self._persisted = start
        self._max_done = start
        self._lock = asyncio.Lock()
        self.on_advance: Callable[[int], Awaitable[None] | None] | None = None

    @property
    def persisted_upto(self) -> int:
        return self._persisted

    @asynccontextmanager
    async def allocate(self) -> AsyncIterator[int]:
        """Yield a new position; when the block exits (committed or failed) the watermark may move."""
        async with self._lock:
            pos = await self._source.next()
            self._in_flight.add(pos)
        try:
            yield pos
        finally:
            self._in_flight.discard(pos)
            self._max_done = max(self._max_done, pos)
            self._recompute()

    @asynccontextmanager
    async def allocate_many(self, n: int) -> AsyncIterator[list[int]]:
        """Like `allocate`, for a batch persisted in one transaction."""
        async with self._lock:
            positions = await self._source.next_many(n)
            self._in_flight.update(positions)
        try:
            yield positions
        finally:
            self._in_flight.difference_update(positions)
            self._max_done = max(self._max_done, positions[-1])
            self._recompute()

    def persisted_if_committed(self, positions: list[int]) -> int:
        """The watermark once `positions` (in flight now) commit: what a writer may record durably in
        the same transaction, since it becomes true exactly when that transaction commits."""
        others = self._in_flight.difference(positions)
        if others:
            return max(self._persisted, min(others) - 1)
        return max(self._persisted, self._max_done, max(positions))

    def _recompute(self) -> None:
        new = (min(self._in_flight) - 1) if self._in_flight else self._max_done
        if new > self._persisted:
            self._persisted = new

    async def advance_idle(self) -> bool:
        """With nothing in flight, claim every position the shared source has handed out so far.

        Safe because the source is monotonic: this writer will never allocate below it again. Lets an
        idle writer stop holding back the minimum position readers can serve.
        """
        # Under the allocation lock: an allocation whose position the source has already handed out
        # but which is not yet registered as in flight must not be claimed as persisted.
        async with self._lock:
            if self._in_flight:
                return False
            last = await self._source.last()
            if self._in_flight or last <= self._persisted:
                return False
            self._max_done = max(self._max_done, last)
            self._recompute()
            return True
