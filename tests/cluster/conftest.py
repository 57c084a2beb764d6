"""A real cluster for tests: main + 2 event persisters + 2 generic workers + 1 stream writer for the
ephemeral streams + 1 background worker, sharing a fresh PostgreSQL database and a Redis, behind nginx
configured by `hs routes`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hs.localcluster import LocalCluster
from hs.testing.cluster import SECRET, instance_url, running_cluster  # noqa: F401  (imported by the tests)
from tests.services import ThrowawayRedis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: ThrowawayRedis) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.fixture(scope="module")
def cluster(pg_base_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(pg_base_dsn, redis_url, tmp_path_factory.mktemp("cluster")) as c:
        yield c


