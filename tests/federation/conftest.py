"""Fixtures for federation tests: a test CA, a real Synapse (installed on first use, started once per
session), federating hs servers, and `remote_server`, which runs one test body against each.

    async def test_join_over_federation(make_fed_hs, remote_server):
        local = await make_fed_hs()                  # FederatingHs on SQLite
        alice = await user(local, unique("alice"))   # tests.federation.client helpers
        bob = await user(remote_server, unique("bob"))
        ...

A failing test's report carries the log tails of every server running when it failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.federation.client import MatrixServer
from tests.federation.cluster_conftest_helpers import (  # noqa: F401 - fixtures
    run_coroutine,
    session_cluster_redis,
    session_fed_cluster,
)
from tests.federation.hs_server import FederatingHs
from tests.federation.synapse import SynapseServer, create_synapse_database, ensure_synapse
from tests.federation.tls import TestCA
from tests.services import create_database, drop_database

T = TypeVar("T")

# Servers running now, by a label; their log tails go into a failing test's report.
RUNNING: dict[str, MatrixServer] = {}


@pytest.fixture(scope="session")
def federation_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """The CA every test server's certificate comes from, and that every test client trusts."""
    return TestCA(tmp_path_factory.mktemp("federation-ca"))


@pytest.fixture(scope="session")
def synapse_python() -> Path:
    """The Python of the cached Synapse virtualenv, installed now if missing (never skipped)."""
    return ensure_synapse()


@pytest.fixture(scope="session")
def synapse(synapse_python: Path, federation_ca: TestCA, pg_base_dsn: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """One Synapse for the whole session (its start runs the schema migrations: seconds), on a fresh
    PostgreSQL database; tests keep apart by unique user and room names."""
    data_dir = tmp_path_factory.mktemp("synapse")
    dsn = run_coroutine(create_synapse_database(pg_base_dsn))
    server = SynapseServer(synapse_python, data_dir, dsn, federation_ca.issue(data_dir / "tls"))
    try:
        server.start()
        RUNNING["synapse"] = server
        yield server
    finally:
        RUNNING.pop("synapse", None)
        server.stop()
        run_coroutine(drop_database(dsn))


MakeFedHs = Callable[..., Awaitable[FederatingHs]]


@pytest.fixture
async def make_fed_hs(federation_ca: TestCA, tmp_path: Path,
                      request: pytest.FixtureRequest) -> AsyncIterator[MakeFedHs]:
    """Factory: `await make_fed_hs(engine="sqlite"|"postgres", **config_overrides)` -> a running
    FederatingHs; all are stopped (and their databases dropped) after the test."""
    started: list[FederatingHs] = []

    async def factory(engine: str = "sqlite", **overrides: Any) -> FederatingHs:
        n = len(started)
        dsn = await create_database(request.getfixturevalue("pg_base_dsn")) if engine == "postgres" else None
        data_dir = tmp_path / f"fed-hs{n}"
        srv = FederatingHs(data_dir, engine, dsn, federation_ca.issue(data_dir / "tls"), overrides)
        try:
            await srv.start()
        except BaseException:
            if dsn:
                await drop_database(dsn)
            raise
        started.append(srv)
        RUNNING[f"hs{n} {srv.server_name}"] = srv
        return srv

    try:
        yield factory
    finally:
        for n, srv in enumerate(started):
            RUNNING.pop(f"hs{n} {srv.server_name}", None)
            await srv.stop()
            if srv.dsn:
                await drop_database(srv.dsn)


@pytest.fixture(params=["synapse", "hs", "cluster"])
async def remote_server(request: pytest.FixtureRequest, make_fed_hs: MakeFedHs) -> MatrixServer:
    """The other side of a federation test: the session's Synapse, a second hs (SQLite), and an hs
    worker cluster behind nginx (two persisters, two federation readers, two federation senders; one
    for the session, tests/federation/cluster_hs.py)."""
    if request.param == "synapse":
        server: MatrixServer = request.getfixturevalue("synapse")
        return server
    if request.param == "cluster":
        cluster: MatrixServer = request.getfixturevalue("session_fed_cluster")
        return cluster
    return await make_fed_hs()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("call", "setup"):
        for label, server in list(RUNNING.items()):
            report.sections.append((f"{label} log (last 60 lines)", server.log_tail(60)))
