"""Fixtures of the federating-cluster tests (import them into a test module by name):

    from tests.federation import cluster_conftest_helpers as fixtures
    cluster_redis = fixtures.cluster_redis  # fed_cluster's Redis
    fed_cluster = fixtures.fed_cluster

- `cluster_redis`: a throwaway Redis per module (the cluster's replication; nothing shared with
  another module's cluster).
- `fed_cluster`: one FederatingCluster per module (starting ~9 processes takes seconds), listed in
  tests/federation/conftest.py's RUNNING so a failing test's report has its log tails.
- `own_synapse`: a Synapse of the test's own (function scope), for a test that stops it; the
  session's Synapse stays up for the others.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.federation.cluster_hs import FederatingCluster, keep_logs
from tests.federation.synapse import SynapseServer, create_synapse_database
from tests.federation.tls import TestCA
from tests.services import ThrowawayRedis, create_database, drop_database

T = TypeVar("T")


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` from a synchronous fixture, in a thread of its own (never the test's event loop)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the caller
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _running() -> dict[str, Any]:
    from tests.federation.conftest import RUNNING

    return RUNNING


def _redis() -> Iterator[str]:
    server = ThrowawayRedis()
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _cluster(federation_ca: TestCA, pg_base_dsn: str, redis_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatingCluster]:
    workdir = tmp_path_factory.mktemp("fed-cluster")
    dsn = run_coroutine(create_database(pg_base_dsn))
    cluster = FederatingCluster(workdir, dsn, redis_url, federation_ca.issue(workdir / "tls"))
    label = f"cluster {cluster.server_name}"
    try:
        cluster.start()
        _running()[label] = cluster
        yield cluster
    finally:
        _running().pop(label, None)
        cluster.stop()
        if keep_logs():
            print(f"federating cluster logs in {cluster.log_dir}")
        run_coroutine(drop_database(dsn))


@pytest.fixture(scope="module")
def cluster_redis() -> Iterator[str]:
    yield from _redis()


@pytest.fixture(scope="module")
def fed_cluster(federation_ca: TestCA, pg_base_dsn: str, cluster_redis: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatingCluster]:
    """A cluster for one test module (fault tests stop and start its instances)."""
    yield from _cluster(federation_ca, pg_base_dsn, cluster_redis, tmp_path_factory)


@pytest.fixture(scope="session")
def session_cluster_redis() -> Iterator[str]:
    yield from _redis()


@pytest.fixture(scope="session")
def session_fed_cluster(federation_ca: TestCA, pg_base_dsn: str, session_cluster_redis: str,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederatingCluster]:
    """One cluster for the whole session, left untouched: the other side of `remote_server`'s
    "cluster" runs (the previous issue's interop tests against a worker cluster)."""
    yield from _cluster(federation_ca, pg_base_dsn, session_cluster_redis, tmp_path_factory)


@pytest.fixture
def own_synapse(synapse_python: Path, federation_ca: TestCA, pg_base_dsn: str,
                tmp_path: Path) -> Iterator[SynapseServer]:
    """A Synapse for this test alone, on a fresh database (its first start migrates: ~10-20 s)."""
    data_dir = tmp_path / "own-synapse"
    dsn = run_coroutine(create_synapse_database(pg_base_dsn))
    server = SynapseServer(synapse_python, data_dir, dsn, federation_ca.issue(data_dir / "tls"))
    try:
        server.start()
        _running()["own synapse"] = server
        yield server
    finally:
        _running().pop("own synapse", None)
        server.stop()
        run_coroutine(drop_database(dsn))
