"""A real cluster for tests: main + 2 event persisters + 2 generic workers + 1 stream writer for the
ephemeral streams + 1 background worker, sharing a fresh PostgreSQL database and a Redis, behind nginx
configured by `hs routes`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from hs.localcluster import LocalCluster
from tests.services import ThrowawayRedis, free_port

SECRET = "replication-secret-for-tests"


def cluster_config(dsn: str, redis_url: str) -> dict[str, Any]:
    def replication() -> dict[str, Any]:
        return {"port": free_port(), "resources": ["replication"]}

    def client() -> dict[str, Any]:
        return {"port": free_port(), "resources": ["client"]}

    main_repl, ep1, ep2, sw, bg, s1r, s2r = (replication() for _ in range(7))
    open_limits = {"per_second": 10000, "burst_count": 10000}
    return {
        "server_name": "cluster.test",
        "database": {"engine": "postgres", "dsn": dsn},
        "redis": {"enabled": True, "url": redis_url},
        "worker_replication_secret": SECRET,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": "shared-secret",
        "bcrypt_rounds": 4,
        "rc_message": open_limits, "rc_registration": open_limits,
        "rc_login": {"address": open_limits, "account": open_limits, "failed_attempts": open_limits},
        "rc_joins": {"local": open_limits, "remote": open_limits},
        "signing_key_path": "signing.key",
        "listeners": [client(), main_repl],
        "instance_map": {
            "main": {"host": "127.0.0.1", "port": main_repl["port"]},
            "event_persister1": {"host": "127.0.0.1", "port": ep1["port"]},
            "event_persister2": {"host": "127.0.0.1", "port": ep2["port"]},
            "stream_writer": {"host": "127.0.0.1", "port": sw["port"]},
            "background_worker": {"host": "127.0.0.1", "port": bg["port"]},
            "sync1": {"host": "127.0.0.1", "port": s1r["port"]},
            "sync2": {"host": "127.0.0.1", "port": s2r["port"]},
        },
        "stream_writers": {
            "events": ["event_persister1", "event_persister2"],
            "typing": "stream_writer", "to_device": "stream_writer", "receipts": "stream_writer",
            "account_data": "stream_writer", "presence": "stream_writer",
        },
        "run_background_tasks_on": "background_worker",
        "workers": {
            "event_persister1": {"app": "generic_worker", "listeners": [ep1]},
            "event_persister2": {"app": "generic_worker", "listeners": [ep2]},
            "stream_writer": {"app": "generic_worker", "listeners": [sw]},
            "background_worker": {"app": "generic_worker", "listeners": [bg]},
            "sync1": {"app": "generic_worker", "listeners": [client(), s1r]},
            "sync2": {"app": "generic_worker", "listeners": [client(), s2r]},
        },
    }


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
    cfg = cluster_config(f"{pg_base_dsn}/{name}", redis_url)
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
