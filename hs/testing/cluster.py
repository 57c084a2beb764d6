"""A real hs cluster for tests: the reference shape of `hs.localcluster.local_cluster_config` (main, two
event persisters, two sync workers, a stream writer, a background worker) as `hs run` processes on a
fresh PostgreSQL database, sharing a Redis, behind nginx configured by `hs routes`.

For code that must work against a worker deployment (a bridge whose /sync lands on one worker and whose
sends on another), where a single process would hide replication lag.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from hs.localcluster import LocalCluster, free_port, local_cluster_config
from hs.testing.process import register_user_sync
from hs.testing.server import RegisteredUser, register_user
from hs.testing.services import create_database, drop_database

SECRET = "replication-secret-for-tests"
# Set to keep a cluster's logs (their directory is printed when the cluster stops).
KEEP_LOGS_ENV = "HS_KEEP_CLUSTER_LOGS"


@contextmanager
def running_cluster(pg_base_dsn: str, redis_url: str, workdir: Path,
                    adjust: Callable[[dict[str, Any]], None] | None = None) -> Iterator[LocalCluster]:
    """The reference cluster (`local_cluster_config`, changed by `adjust`) on a fresh database on the
    PostgreSQL server at `pg_base_dsn`, running until the block ends; the database is dropped afterwards.

    Blocking: call it outside a running event loop (a synchronous fixture)."""
    from hs.events.signing import SigningKey, write_signing_key_file

    dsn = asyncio.run(create_database(pg_base_dsn))
    cfg = local_cluster_config(dsn, redis_url, SECRET)
    if adjust is not None:
        adjust(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    write_signing_key_file(workdir / "signing.key", SigningKey.generate())
    c = LocalCluster(workdir / "cluster.yaml", proxy_port=free_port(), workdir=workdir)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        if os.environ.get(KEEP_LOGS_ENV):
            print(f"cluster logs in {c.log_dir}")
        asyncio.run(drop_database(dsn))


def instance_url(cluster: LocalCluster, instance: str, resource: str = "client") -> str:
    """The direct URL of one instance's listener serving `resource` (bypassing nginx)."""
    for listener in cluster.config.listeners_for(instance):
        if resource in listener.all_resources:
            return f"http://127.0.0.1:{listener.port}"
    raise KeyError(f"{instance} has no {resource} listener")


class ClusterServer:
    """What the `hs_cluster` fixture gives: the cluster behind nginx, with the same face as the other
    server fixtures (`base_url`, `server_name`, user registration) and the processes in `.cluster`."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def base_url(self) -> str:
        return self.cluster.base_url

    @property
    def server_name(self) -> str:
        return self.cluster.config.server_name

    def instance_url(self, instance: str, resource: str = "client") -> str:
        return instance_url(self.cluster, instance, resource)

    def register_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return register_user_sync(self.base_url, name, password)

    async def aregister_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return await register_user(self.base_url, name, password)
