"""`hs port-db`: a SQLite server with rooms, E2EE keys and push rules, ported into PostgreSQL (interrupted
once and resumed), then the same clients' flows on a server started on the ported database."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hs.db.pool import PostgresDatabase
from hs.db.port import PortError, port
from hs.server import HomeServer
from hs.testing.server import homeserver_config
from tests.harness import OPEN_CLIENTS, TestHomeServer, ok, user
from tests.integration.test_keys import device_keys, otks
from tests.services import create_database, drop_database, free_port

SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
OVERRIDE = {"conditions": [{"kind": "event_match", "key": "content.body", "pattern": "beer"}],
            "actions": ["notify", {"set_tweak": "sound", "value": "beer.wav"}]}


async def _fill(srv: TestHomeServer) -> dict[str, Any]:
    alice = await user(srv, "alice")
    bob = await user(srv, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    for i in range(30):
        await (alice if i % 2 else bob).send_message(room, f"message {i}")
    keys, _ = device_keys(alice)
    await ok(alice, "POST", "/keys/upload", {"device_keys": keys, "one_time_keys": otks(5)})
    await ok(alice, "PUT", "/pushrules/global/override/beer", OVERRIDE)
    await ok(bob, "POST", SLIDING, {"conn_id": "before", "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}})
    since = (await bob.sync())["next_batch"]
    return {"room": room, "alice_device": alice.device_id, "keys": keys, "bob": (bob.token, bob.user_id, since)}


async def _pg_server(tmp_path: Path, dsn: str, old: TestHomeServer) -> TestHomeServer:
    """The same server (name, signing key) started on the ported database."""
    srv = TestHomeServer(tmp_path / "pg", "postgres", dsn)
    srv.hs = HomeServer(srv.config, "main", signing_key=old.hs.signing_key)
    await srv.start()
    return srv


async def test_port_sqlite_to_postgres_resumes_and_serves(tmp_path: Path, pg_base_dsn: str) -> None:
    src = TestHomeServer(tmp_path / "sqlite")
    await src.start()
    try:
        seeded = await _fill(src)
    finally:
        await src.stop()
    sqlite_path = str(src.data_dir / "hs.db")

    dsn = await create_database(pg_base_dsn)
    target = PostgresDatabase(dsn)
    await target.open()
    try:
        # Interrupted after two batches of 5 rows...
        first = await port(sqlite_path, target, batch_size=5, max_batches=2, progress=None)
        assert not first.complete and 0 < sum(first.tables.values()) <= 10
        # ... and resumed: nothing is copied twice (a duplicate primary key would fail the insert).
        bar = io.StringIO()
        second = await port(sqlite_path, target, batch_size=5, progress=bar)
        assert second.complete and second.mismatches == {}
        assert "events " in bar.getvalue() and "100%" in bar.getvalue()
        # A finished port run again copies nothing.
        third = await port(sqlite_path, target, progress=None)
        assert third.complete and sum(third.tables.values()) == 0
    finally:
        await target.close()

    dst = await _pg_server(tmp_path, dsn, src)
    try:
        alice = dst.client()
        OPEN_CLIENTS.append(alice)
        status, login = await alice.request("POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "password123"}, auth=False)
        assert status == 200, login
        alice.token, alice.user_id, alice.device_id = login["access_token"], login["user_id"], login["device_id"]
        room = seeded["room"]

        # History pages back across the ported events.
        bodies: list[str] = []
        params = {"dir": "b", "limit": "10"}
        while True:
            page = await ok(alice, "GET", f"/rooms/{room}/messages", **params)
            bodies += [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
            if "end" not in page or not page["chunk"]:
                break
            params = {"dir": "b", "limit": "10", "from": page["end"]}
        assert bodies == [f"message {i}" for i in reversed(range(30))]

        # Device keys and one-time keys.
        q = await ok(alice, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
        assert q["device_keys"][alice.user_id][seeded["alice_device"]]["keys"] == seeded["keys"]["keys"]
        claim = await ok(alice, "POST", "/keys/claim", {"one_time_keys": {
            alice.user_id: {seeded["alice_device"]: "signed_curve25519"}}})
        assert claim["one_time_keys"][alice.user_id][seeded["alice_device"]]

        # Push rules.
        rule = await ok(alice, "GET", "/pushrules/global/override/beer")
        assert rule["conditions"] == OVERRIDE["conditions"]

        # A new message continues the stream after the copied ones.
        await alice.send_message(room, "after the port")
        page = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", limit="2")
        assert [e["content"].get("body") for e in page["chunk"]][:2] == ["after the port", "message 29"]
        sync = await alice.sync()
        timeline = sync["rooms"]["join"][room]["timeline"]["events"]
        assert timeline[-1]["content"]["body"] == "after the port"

        # A client held across the port (bob: his access token and his last sync token from SQLite)
        # carries on: the incremental sync brings exactly what happened since.
        bob = dst.client()
        OPEN_CLIENTS.append(bob)
        bob.token, bob.user_id, since = seeded["bob"]
        sync = await bob.sync(since)
        timeline = sync["rooms"]["join"][room]["timeline"]["events"]
        assert [e["content"].get("body") for e in timeline] == ["after the port"]
        # A new sliding sync connection takes an id after the copied ones (the BIGSERIAL sequence moved).
        slid = await ok(bob, "POST", SLIDING, {"conn_id": "after", "lists": {"all": {"ranges": [[0, 9]],
                                                                                       "timeline_limit": 1}}})
        assert slid["lists"]["all"]["count"] == 1
    finally:
        await dst.stop()
        await drop_database(dsn)


async def test_port_refuses_non_empty_target(tmp_path: Path, pg_base_dsn: str) -> None:
    src = TestHomeServer(tmp_path / "sqlite")
    await src.start()
    await src.stop()
    dsn = await create_database(pg_base_dsn)
    target = PostgresDatabase(dsn)
    await target.open()
    try:
        await target.execute("CREATE TABLE something_else (x INTEGER)")
        with pytest.raises(PortError, match="not empty"):
            await port(str(src.data_dir / "hs.db"), target, progress=None)
        with pytest.raises(PortError, match="no SQLite database"):
            await port(str(tmp_path / "missing.db"), target, progress=None)
    finally:
        await target.close()
        await drop_database(dsn)
    assert sqlite3.connect(str(src.data_dir / "hs.db")).execute("SELECT 1").fetchone() == (1,)


async def test_port_db_command(tmp_path: Path, pg_base_dsn: str) -> None:
    """`hs port-db` as an operator runs it: stopped early with --max-batches (exit 2, resumable), then run
    again to the end with the progress on stderr and the verification's verdict on stdout."""
    src = TestHomeServer(tmp_path / "sqlite")
    await src.start()
    try:
        await _fill(src)
    finally:
        await src.stop()
    dsn = await create_database(pg_base_dsn)
    try:
        cfg = tmp_path / "pg.yaml"
        cfg.write_text(yaml.safe_dump(homeserver_config(free_port(), {"engine": "postgres", "dsn": dsn})))
        base = [sys.executable, "-m", "hs.cli", "port-db", "--sqlite-database", str(src.data_dir / "hs.db"),
                "-c", str(cfg)]

        async def run(*extra: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(*base, *extra, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            return int(proc.returncode or 0), out.decode(), err.decode()

        code, _out, err = await run("--batch-size", "3", "--max-batches", "4")
        assert code == 2 and "run the same command again to resume" in err, err
        code, out, err = await run("--batch-size", "3")
        assert code == 0, err
        assert "row counts verified" in out
        assert "events " in err and "100%" in err
    finally:
        await drop_database(dsn)
