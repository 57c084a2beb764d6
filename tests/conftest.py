"""Shared fixtures: a real PostgreSQL server (machine's or throwaway), and in-process homeservers
serving real HTTP on a free port, on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hs.testing.services import postgres_server
from tests.harness import OPEN_CLIENTS, TestHomeServer
from tests.services import create_database, drop_database


@pytest.fixture(scope="session")
def pg_base_dsn() -> Iterator[str]:
    """$HS_TEST_POSTGRES, else the machine's PostgreSQL on 5432, else a throwaway server."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
async def pg_dsn(pg_base_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    dsn = await create_database(pg_base_dsn)
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_server(tmp_path: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Factory: `await make_server(engine, **config)` -> a running TestHomeServer."""
    started: list[TestHomeServer] = []

    async def factory(engine: str = "sqlite", **config: Any) -> TestHomeServer:
        dsn = None
        if engine == "postgres":
            dsn = await create_database(request.getfixturevalue("pg_base_dsn"))
        srv = TestHomeServer(tmp_path / f"hs{len(started)}", engine, dsn, config)
        await srv.start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        await srv.stop()
        if srv.dsn:
            await drop_database(srv.dsn)


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    """A homeserver with open registration, on each engine in turn."""
    return await make_server(engine)


@pytest.fixture(autouse=True)
async def _close_open_clients() -> AsyncIterator[None]:
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().close()
