"""Failure injection for multi-step writes: make the n-th statement of a named transaction fail, and
count what a failed operation may have left behind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from hs.db.pool import Connection, Database, Row


class InjectedFailure(RuntimeError):
    """The failure a test injected (never a real one)."""


class FailingConnection(Connection):
    """A transaction's connection whose `fail_at`-th statement (1-based) raises InjectedFailure."""

    def __init__(self, inner: Connection, fail_at: int, counter: list[int]) -> None:
        self.inner = inner
        self.engine = inner.engine
        self.fail_at = fail_at
        self.counter = counter

    def _step(self, sql: str) -> None:
        self.counter[0] += 1
        if self.counter[0] == self.fail_at:
            raise InjectedFailure(f"injected failure at statement {self.fail_at}: {sql[:60]}")

    async def execute(self, sql: str, *args: Any) -> None:
        self._step(sql)
        await self.inner.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._step(sql)
        await self.inner.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self._step(sql)
        return await self.inner.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        self._step(sql)
        return await self.inner.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._step(sql)
        return await self.inner.fetchval(sql, *args)


@contextmanager
def failing_transaction(monkeypatch: pytest.MonkeyPatch, db: Database, name: str, fail_at: int,
                        first_only: bool = False) -> Iterator[list[int]]:
    """While active, the `fail_at`-th statement of every `name` transaction (or of the first one only)
    fails; yields the number of statements the last such transaction ran (so a test knows when
    `fail_at` is past the end)."""
    counter = [0]
    seen = [0]
    original = db.run_transaction

    async def run_transaction(txn_name: str, fn: Callable[[Connection], Awaitable[Any]]) -> Any:
        if txn_name != name or (first_only and seen[0] > 0):
            return await original(txn_name, fn)
        seen[0] += 1
        counter[0] = 0

        async def wrapped(c: Connection) -> Any:
            return await fn(FailingConnection(c, fail_at, counter))

        return await original(txn_name, wrapped)

    with monkeypatch.context() as m:
        m.setattr(db, "run_transaction", run_transaction)
        yield counter


ROOM_TABLES = ("rooms", "events", "room_aliases", "current_state_events", "room_memberships", "state_groups",
               "state_groups_state", "event_forward_extremities", "event_notifications")


async def row_counts(db: Database, tables: Sequence[str] = ROOM_TABLES) -> dict[str, int]:
    return {t: int(await db.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in tables}
