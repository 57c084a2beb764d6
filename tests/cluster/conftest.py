"""A real cluster for tests: main + 2 event persisters + 2 generic workers + 1 stream writer for the
ephemeral streams + 1 background worker, sharing a fresh PostgreSQL database and a Redis, behind nginx
configured by `hs routes`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from hs.localcluster import LocalCluster, local_cluster_config
from tests.services import ThrowawayRedis, create_database, drop_database, free_port

SECRET = "replication-secret-for-tests"


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


@contextmanager
def running_cluster(pg_base_dsn: str, redis_url: str, workdir: Path,
                    adjust: Callable[[dict[str, Any]], None] | None = None) -> Iterator[LocalCluster]:
    """The reference cluster (`local_cluster_config`, changed by `adjust`) on a fresh database,
    running until the block ends; the database is dropped afterwards."""
    from hs.events.signing import SigningKey, write_signing_key_file

    dsn = asyncio.run(create_database(pg_base_dsn))
    cfg = local_cluster_config(dsn, redis_url, SECRET)
    if adjust is not None:
        adjust(cfg)
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    write_signing_key_file(workdir / "signing.key", SigningKey.generate())
    c = LocalCluster(workdir / "cluster.yaml", proxy_port=free_port(), workdir=workdir)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if os.environ.get("HS_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs in {c.log_dir}")
        asyncio.run(drop_database(dsn))


@pytest.fixture(scope="module")
def cluster(pg_base_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(pg_base_dsn, redis_url, tmp_path_factory.mktemp("cluster")) as c:
        yield c


def instance_url(cluster: LocalCluster, instance: str, resource: str = "client") -> str:
    for listener in cluster.config.listeners_for(instance):
        if resource in listener.all_resources:
            return f"http://127.0.0.1:{listener.port}"
    raise KeyError(instance)
