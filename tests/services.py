"""Real PostgreSQL and Redis for tests: the machine's own when they answer, else throwaway servers
started from the installed binaries (a fresh machine or CI may have the packages but no service)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

from hs.localcluster import free_port  # noqa: F401  (one allocator: never the same port twice)


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
    raise RuntimeError(f"PostgreSQL binary {name} not found; install the postgresql package")


class ThrowawayPostgres:
    """initdb + postgres in a temp dir on a free port, trust auth; runs as `postgres` when we are root."""

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
        data = os.path.join(self.dir, "data")
        subprocess.run(self._cmd([_pg_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(self._cmd([
            _pg_bin("postgres"), "-D", data, "-p", str(self.port), "-k", self.dir, "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off", "-c", "max_connections=300"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if port_open("127.0.0.1", self.port):
                return f"postgresql://postgres@127.0.0.1:{self.port}"
            time.sleep(0.1)
        raise RuntimeError("throwaway PostgreSQL did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if port_open("127.0.0.1", self.port):
                return f"redis://127.0.0.1:{self.port}/0"
            time.sleep(0.1)
        raise RuntimeError("throwaway Redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


async def create_database(base_dsn: str, prefix: str = "hs_test_", options: str = "") -> str:
    """A fresh, empty PostgreSQL database on the server at `base_dsn` (`options`: what CREATE DATABASE
    takes after the name); returns its DSN."""
    import uuid

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
