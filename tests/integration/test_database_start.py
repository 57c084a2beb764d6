"""Connecting to the database at start-up, on real PostgreSQL servers: passwords with reserved characters,
a server that comes up after hs, one that never does, refusals that waiting cannot cure, and what
`hs run` prints for each (one line, no traceback)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from hs.config import parse_config
from hs.db.migrations import apply_migrations
from hs.db.pool import DatabaseStartupError, PostgresDatabase, make_database
from tests.services import ThrowawayPostgres, free_port

HS = [sys.executable, "-m", "hs.cli"]

ROLE = "hs user@x"
PASSWORD = "p@ss:w/o#r%d ?&=+ x"
DATABASE = "hs db/1"
# The superuser keeps trust (the test's own connection); everybody else must give their password.
SCRAM_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def _database_config(**args: Any) -> dict[str, Any]:
    return {"server_name": "localhost", "database": {"name": "psycopg2", "args": args}}


async def _wait_until_passwords_are_checked(port: int) -> None:
    """pg_reload_conf() only signals the server: wait until a wrong password is actually refused."""
    for _ in range(100):
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user=ROLE, password="wrong",
                                         database="postgres")
        except asyncpg.InvalidPasswordError:
            return
        await conn.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the server never started checking passwords")


async def test_a_password_with_reserved_characters_authenticates() -> None:
    """`@:/#%?&=+` and spaces in the password (and in the user and database names) reach PostgreSQL as
    written, against a server that checks the password (scram-sha-256), not one that trusts anyone."""
    pg = ThrowawayPostgres()
    base = await asyncio.to_thread(pg.start)
    try:
        admin = await asyncpg.connect(base + "/postgres")
        await admin.execute(f"CREATE ROLE \"{ROLE}\" LOGIN PASSWORD '{PASSWORD}'")
        await admin.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"')
        (Path(pg.dir) / "data" / "pg_hba.conf").write_text(SCRAM_HBA)
        await admin.fetchval("SELECT pg_reload_conf()")
        await _wait_until_passwords_are_checked(pg.port)

        args = {"user": ROLE, "password": PASSWORD, "database": DATABASE, "host": "127.0.0.1", "port": pg.port}
        db = make_database(parse_config(_database_config(**args)).database)
        await db.open()
        try:
            assert await db.fetchval("SELECT current_user") == ROLE
            assert await db.fetchval("SELECT current_database()") == DATABASE
            assert await apply_migrations(db) >= 1
        finally:
            await db.close()

        wrong = make_database(parse_config(_database_config(**{**args, "password": PASSWORD[:-1]})).database)
        with pytest.raises(DatabaseStartupError) as refused:
            await wrong.open()
        assert str(refused.value) == (f"cannot use the PostgreSQL database '{DATABASE}' at 127.0.0.1:{pg.port}"
                                      f" as user '{ROLE}': password authentication failed for user \"{ROLE}\"")
        assert PASSWORD not in str(refused.value)

        await admin.execute(f'DROP DATABASE "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE "{ROLE}"')
        await admin.close()
    finally:
        await asyncio.to_thread(pg.stop)


async def test_start_waits_for_a_postgres_that_comes_up_later(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    db = PostgresDatabase(f"postgresql://postgres@127.0.0.1:{port}/postgres", startup_timeout_s=120)
    opening = asyncio.ensure_future(db.open())
    not_yet = f"cannot connect to the PostgreSQL database 'postgres' at 127.0.0.1:{port} as user 'postgres' yet:"
    for _ in range(100):
        if any(r.getMessage().startswith(not_yet) for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no retry was logged")
    assert not opening.done()
    pg = ThrowawayPostgres()
    pg.port = port
    try:
        await asyncio.to_thread(pg.start)
        await asyncio.wait_for(opening, 30)
        assert await db.fetchval("SELECT 1") == 1
        await db.close()
    finally:
        opening.cancel()
        await asyncio.to_thread(pg.stop)
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith(not_yet)]
    assert all("Connect call failed" in m and "; retrying in " in m for m in retries), retries


async def test_a_refusal_that_waiting_cannot_cure_fails_at_once(pg_base_dsn: str) -> None:
    started = time.monotonic()
    db = PostgresDatabase(f"{pg_base_dsn}/hs_no_such_database", startup_timeout_s=60)
    with pytest.raises(DatabaseStartupError) as refused:
        await db.open()
    assert time.monotonic() - started < 10
    assert str(refused.value).endswith(
        ": database \"hs_no_such_database\" does not exist (create it first, e.g. `createdb --owner=<user>"
        " <name>`, or fix database.args.database)")


async def test_a_tls_refusal_is_not_mistaken_for_a_server_not_up_yet(pg_base_dsn: str) -> None:
    """asyncpg reports a server without TLS as a ConnectionError, an OSError like a refused connection."""
    conn = await asyncpg.connect(pg_base_dsn + "/postgres")
    tls = await conn.fetchval("SHOW ssl")
    await conn.close()
    if tls == "on":
        pytest.skip("the test server offers TLS")
    started = time.monotonic()
    with pytest.raises(DatabaseStartupError, match="rejected SSL upgrade$"):
        await PostgresDatabase(f"{pg_base_dsn}/postgres?sslmode=require", startup_timeout_s=60).open()
    assert time.monotonic() - started < 10


async def test_pool_bounds_and_tcp_keepalives_from_synapse_args(pg_base_dsn: str) -> None:
    base = urlsplit(pg_base_dsn)
    cfg = parse_config(_database_config(
        user=base.username or "postgres", host=base.hostname, port=base.port or 5432, database="postgres",
        cp_min=3, cp_max=4, keepalives_idle=37, keepalives_interval=7, keepalives_count=3))
    db = make_database(cfg.database)
    assert isinstance(db, PostgresDatabase)
    await db.open()
    try:
        assert (db.pool.get_size(), db.pool.get_min_size(), db.pool.get_max_size()) == (3, 3, 4)
        async with db.pool.acquire() as conn:
            sock = conn._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 37
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        await db.close()


# -- `hs run` as an admin starts it --------------------------------------------------------------------
def _write_config(tmp_path: Path, database: dict[str, Any]) -> tuple[Path, int]:
    cfg = tmp_path / "homeserver.yaml"
    subprocess.run([*HS, "generate-config", "--server-name", "localhost", "-c", str(cfg)], check=True,
                   capture_output=True)
    data = yaml.safe_load(cfg.read_text())
    port = free_port()
    data["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "resources": ["client"]}]
    data["database"] = database
    cfg.write_text(yaml.safe_dump(data))
    return cfg, port


class _Lines:
    """A stream's lines as they arrive, read on a thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen in {self.lines}")


def test_hs_run_starts_once_postgres_comes_up(tmp_path: Path) -> None:
    unused_port = free_port()
    cfg, http_port = _write_config(tmp_path, {"name": "psycopg2", "startup_timeout": "2m", "args": {
        "user": "postgres", "database": "postgres", "host": "127.0.0.1", "port": unused_port}})
    proc = subprocess.Popen([*HS, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pg = ThrowawayPostgres()
    pg.port = unused_port
    try:
        out, err = _Lines(proc.stdout), _Lines(proc.stderr)
        line = err.wait_for("cannot connect to the PostgreSQL database 'postgres'", 30)
        assert f"at 127.0.0.1:{unused_port} as user 'postgres' yet: [Errno 111] " in line
        pg.start()
        out.wait_for("is running", 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/_matrix/client/versions", timeout=5) as r:
            assert b"versions" in r.read()
    finally:
        proc.terminate()
        code = proc.wait(30)
        pg.stop()
    assert code == 0
    assert not any("Traceback" in line for line in err.lines), err.lines


def test_hs_run_gives_up_with_one_clear_line(tmp_path: Path) -> None:
    unused_port = free_port()
    cfg, _ = _write_config(tmp_path, {"name": "psycopg2", "startup_timeout": "2s", "args": {
        "user": "hs", "password": "secret", "database": "hs", "host": "127.0.0.1", "port": unused_port}})
    started = time.monotonic()
    done = subprocess.run([*HS, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    lines = done.stderr.strip().splitlines()
    where = f"PostgreSQL database 'hs' at 127.0.0.1:{unused_port} as user 'hs'"
    retries = [line for line in lines if f"cannot connect to the {where} yet" in line]
    assert len(retries) >= 2 and all("; retrying in " in line for line in retries), lines
    # (the refusal's wording is the event loop's: uvloop says "Connection refused")
    assert lines[-1].startswith(f"cannot start: cannot connect to the {where}: [Errno 111] "), lines
    assert lines[-1].endswith("; gave up after 2s (database.startup_timeout)"), lines
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_hs_run_and_migrate_refuse_a_synapse_database(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.db"
    synapse = sqlite3.connect(path)
    synapse.executescript("""
        CREATE TABLE schema_version (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE, version INTEGER NOT NULL,
                                     upgraded BOOL NOT NULL, CHECK (lock = 'X'));
        INSERT INTO schema_version (version, upgraded) VALUES (88, 1);
        CREATE TABLE applied_schema_deltas (version INTEGER NOT NULL, file TEXT NOT NULL);
        CREATE TABLE event_json (event_id TEXT NOT NULL, room_id TEXT NOT NULL, internal_metadata TEXT NOT NULL,
                                 json TEXT NOT NULL, format_version INTEGER);
    """)
    synapse.close()
    cfg, _ = _write_config(tmp_path, {"name": "sqlite3", "args": {"database": str(path)}})
    for command, failed in (("run", "cannot start"), ("migrate", "cannot migrate")):
        done = subprocess.run([*HS, command, "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"{failed}: the SQLite database {path} is a Synapse database (Synapse schema version 88, tables"
            " such as applied_schema_deltas, event_json): hs cannot use a Synapse database directly. Point"
            " `database` at a new, empty database for hs (a tool to port a Synapse server's data into hs does"
            " not exist yet)"), command
        assert "Traceback" not in done.stderr
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'receipts'").fetchone() == (0,)


async def test_an_sqlite_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    from hs.db.pool import SqliteDatabase

    with pytest.raises(DatabaseStartupError) as refused:
        await SqliteDatabase(str(tmp_path / "missing-dir" / "hs.db")).open()
    assert str(refused.value) == f"cannot open the SQLite database {tmp_path}/missing-dir/hs.db: unable to open database file"
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database, but long enough for SQLite to read a header from it\n" * 20)
    with pytest.raises(DatabaseStartupError, match="notes.txt: file is not a database$"):
        await SqliteDatabase(str(not_sqlite)).open()
