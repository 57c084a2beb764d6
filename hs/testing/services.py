"""Real PostgreSQL and Redis for tests: given by the environment, the machine's own when they answer, else
throwaway servers started from the installed binaries (a fresh machine or CI may have the packages but
no running service).

Environment: `HS_TEST_POSTGRES` (a server DSN without a database, e.g. `postgresql://postgres@db:5432`)
and `HS_TEST_REDIS` (a Redis URL, e.g. `redis://127.0.0.1:6379/0`).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from hs.localcluster import free_port

POSTGRES_ENV = "HS_TEST_POSTGRES"
REDIS_ENV = "HS_TEST_REDIS"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path:
        return path
    raise RuntimeError(f"PostgreSQL binary {name} not found; install the postgresql package "
                       f"or set {POSTGRES_ENV} to a server's DSN")


def _wait_port(port: int, what: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if port_open("127.0.0.1", port):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"throwaway {what} did not start")


class ThrowawayPostgres:
    """initdb + postgres in a temp dir on a free port, trust auth; runs as `postgres` when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hs-pg-")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def start(self) -> str:
        """Start the server; returns its DSN (no database: append `/<name>`)."""
        data = os.path.join(self.dir, "data")
        subprocess.run(self._cmd([_pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(self._cmd([
            _pg_bin("postgres"), "-D", data, "-p", str(self.port), "-k", self.dir,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, "PostgreSQL", self.proc)
        # The port opens before the server takes connections ("the database system is starting up"):
        # wait until pg_isready says it accepts them.
        for _ in range(200):
            ready = subprocess.run([_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                   check=False)
            if ready.returncode == 0:
                return f"postgresql://postgres@127.0.0.1:{self.port}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("throwaway PostgreSQL did not start taking connections")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    """redis-server on a free port, nothing persisted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise RuntimeError(f"redis-server not found; install redis or set {REDIS_ENV} to a Redis URL")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, "Redis", self.proc)
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server's DSN (no database) for as long as the block runs: `HS_TEST_POSTGRES`, else
    one answering on 127.0.0.1:5432, else a throwaway one stopped afterwards."""
    env = os.environ.get(POSTGRES_ENV)
    if env:
        yield env.rstrip("/")
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432"
        return
    server = ThrowawayPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL for as long as the block runs: `HS_TEST_REDIS`, else a throwaway server. (Not the
    machine's own on 6379: the cluster's streams would share it with whatever else uses it.)"""
    env = os.environ.get(REDIS_ENV)
    if env:
        yield env
        return
    server = ThrowawayRedis()
    try:
        yield server.start()
    finally:
        server.stop()


async def create_database(base_dsn: str, prefix: str = "hs_test_", options: str = "") -> str:
    """A fresh, empty PostgreSQL database on the server at `base_dsn` (`options`: what CREATE DATABASE
    takes after the name); returns its DSN."""
    import asyncpg

    name = prefix + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(base_dsn + "/postgres")
    try:
        await conn.execute(f"CREATE DATABASE {name} {options}".strip())
    finally:
        await conn.close()
    return f"{base_dsn}/{name}"


async def drop_database(dsn: str) -> None:
    """Drop a database made by `create_database`, whoever is still connected to it."""
    import asyncpg

    base, name = dsn.rsplit("/", 1)
    conn = await asyncpg.connect(base + "/postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()
