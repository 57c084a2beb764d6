"""A real cluster for tests: main + 2 event persisters + 2 generic workers + 1 stream writer for the
ephemeral streams + 1 background worker, sharing a fresh PostgreSQL database and a Redis, behind nginx
configured by `hs routes`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from hs.localcluster import LocalCluster, local_cluster_config
from tests.services import ThrowawayRedis, free_port

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


@pytest.fixture(scope="module")
def cluster(pg_base_dsn: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    import asyncio

    from hs.events.signing import SigningKey, write_signing_key_file

    name = "hs_cluster_" + uuid.uuid4().hex[:10]

    async def create() -> None:
        conn = await asyncpg.connect(pg_base_dsn + "/postgres")
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()

    asyncio.run(create())
    workdir: Path = tmp_path_factory.mktemp("cluster")
    cfg = local_cluster_config(f"{pg_base_dsn}/{name}", redis_url, SECRET)
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    write_signing_key_file(workdir / "signing.key", SigningKey.generate())
    c = LocalCluster(workdir / "cluster.yaml", proxy_port=free_port(), workdir=workdir)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        if os.environ.get("HS_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs in {c.log_dir}")

        async def drop() -> None:
            conn = await asyncpg.connect(pg_base_dsn + "/postgres")
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.close()

        asyncio.run(drop())


def instance_url(cluster: LocalCluster, instance: str, resource: str = "client") -> str:
    for listener in cluster.config.listeners_for(instance):
        if resource in listener.all_resources:
            return f"http://127.0.0.1:{listener.port}"
    raise KeyError(instance)
