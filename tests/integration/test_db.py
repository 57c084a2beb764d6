"""The database layer on real SQLite and PostgreSQL: migrations, placeholders, transaction retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hs.db.migrations import apply_migrations
from hs.db.pool import Database, PostgresDatabase, SqliteDatabase


@pytest.fixture
async def db(engine: str, tmp_path: Any, request: pytest.FixtureRequest) -> Any:
    dsn = None
    if engine == "postgres":
        dsn = await _fresh_pg(request)
        database: Database = PostgresDatabase(dsn)
    else:
        database = SqliteDatabase(str(tmp_path / "t.db"))
    await database.open()
    yield database
    await database.close()
    if dsn:
        import asyncpg

        base, name = dsn.rsplit("/", 1)
        conn = await asyncpg.connect(base + "/postgres")
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


async def _fresh_pg(request: pytest.FixtureRequest) -> str:
    import uuid

    import asyncpg

    base = request.getfixturevalue("pg_base_dsn")
    name = "hs_test_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(base + "/postgres")
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    return f"{base}/{name}"


async def test_migrations_apply_once(db: Database) -> None:
    assert await apply_migrations(db) >= 1
    assert await apply_migrations(db) == 0
    assert await db.fetchval("SELECT COUNT(*) FROM users") == 0


async def test_placeholders_and_rows(db: Database) -> None:
    await apply_migrations(db)
    await db.execute("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)", "@a:x", "A")
    await db.execute("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)", "@b:x", None)
    rows = await db.fetch("SELECT user_id, displayname FROM profiles WHERE user_id = $2 OR user_id = $1"
                          " ORDER BY user_id", "@a:x", "@b:x")
    assert rows == [{"user_id": "@a:x", "displayname": "A"}, {"user_id": "@b:x", "displayname": None}]


async def test_failed_transaction_rolls_back(db: Database) -> None:
    await apply_migrations(db)

    async def txn(c: Any) -> None:
        await c.execute("INSERT INTO profiles (user_id) VALUES ($1)", "@gone:x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.run_transaction("t", txn)
    assert await db.fetchval("SELECT COUNT(*) FROM profiles") == 0


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_sqlite_transaction_that_awaits_something_else_is_refused(db: Database) -> None:
    """A SQLite transaction runs whole on the database thread; awaiting anything but the connection
    there would deadlock, so it is refused and rolled back instead."""
    await apply_migrations(db)

    async def txn(c: Any) -> None:
        await c.execute("INSERT INTO profiles (user_id) VALUES ($1)", "@gone:x")
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other than its connection"):
        await db.run_transaction("t", txn)
    assert await db.fetchval("SELECT COUNT(*) FROM profiles") == 0


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_sqlite_reads_and_transactions_interleave_from_many_tasks(db: Database) -> None:
    """Concurrent callers share the one connection thread; each transaction stays whole."""
    await apply_migrations(db)

    async def add(i: int) -> None:
        async def txn(c: Any) -> None:
            await c.execute("INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)", f"@u{i}:x", "a")
            await c.execute("UPDATE profiles SET displayname = $2 WHERE user_id = $1", f"@u{i}:x", "b")

        await db.run_transaction("t", txn)
        assert await db.fetchval("SELECT displayname FROM profiles WHERE user_id = $1", f"@u{i}:x") == "b"

    await asyncio.gather(*(add(i) for i in range(50)))
    assert await db.fetchval("SELECT COUNT(*) FROM profiles WHERE displayname = 'b'") == 50


@pytest.mark.parametrize("engine", ["postgres"])
async def test_serialization_failures_are_retried(db: Database) -> None:
    """Two SERIALIZABLE transactions incrementing one row conflict; both must still succeed."""
    await apply_migrations(db)
    await db.execute("INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('t', 'x', 0)")
    barrier = asyncio.Barrier(2)
    attempts = 0

    async def bump(c: Any) -> None:
        nonlocal attempts
        attempts += 1
        await c.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        pos = await c.fetchval("SELECT position FROM stream_positions WHERE stream_name = 't'")
        if attempts <= 2:
            await barrier.wait()
        await c.execute("UPDATE stream_positions SET position = $1 WHERE stream_name = 't'", pos + 1)

    await asyncio.gather(db.run_transaction("bump", bump), db.run_transaction("bump", bump))
    assert await db.fetchval("SELECT position FROM stream_positions WHERE stream_name = 't'") == 2
    assert attempts >= 3


async def test_background_prunes_old_transaction_ids(make_server: Any) -> None:
    srv = await make_server("sqlite")
    c = srv.client()
    await c.register("pruner")
    room = await c.create_room()
    await c.send_message(room, "old", txn_id="t-old")
    await srv.hs.db.execute("UPDATE event_txn_ids SET inserted_ts = 0")
    await c.send_message(room, "new", txn_id="t-new")
    await srv.hs.background.prune_transaction_ids()
    rows = await srv.hs.db.fetch("SELECT txn_id FROM event_txn_ids")
    assert [r["txn_id"] for r in rows] == ["t-new"]
    await c.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_background_prunes_notifications_older_than_a_month(make_server: Any, engine: str) -> None:
    from hs.services.background import NOTIFICATION_RETENTION_MS
    from hs.util import now_ms

    srv = await make_server(engine)
    alice, bob = srv.client(), srv.client()
    await alice.register("alice")
    await bob.register("bob")
    room = await alice.create_room(preset="public_chat")
    status, _ = await bob.request("POST", f"/join/{room}", {})
    assert status == 200
    sent = [await alice.send_message(room, f"m{i}") for i in range(6)]
    await srv.hs.event_sender.flush_rests()
    # The first four are from two months ago (timestamps rewritten; the cut is found by position).
    old_ts = now_ms() - 2 * NOTIFICATION_RETENTION_MS
    for event_id in sent[:4]:
        await srv.hs.db.execute("UPDATE events SET origin_server_ts = $1 WHERE event_id = $2", old_ts, event_id)
    await srv.hs.db.execute("UPDATE events SET origin_server_ts = $1 WHERE stream_ordering < ("
                            "SELECT stream_ordering FROM events WHERE event_id = $2)", old_ts, sent[0])
    assert await srv.hs.background.prune_notifications() == 4
    rows = await srv.hs.db.fetch("SELECT event_id FROM event_notifications ORDER BY stream_ordering")
    assert [r["event_id"] for r in rows] == sent[4:]
    assert await srv.hs.background.prune_notifications() == 0
    await alice.close()
    await bob.close()


async def test_push_actions_become_one_notification_row_per_event(db: Database) -> None:
    """Migration 007 folds the per-user push action rows of a database at version 6 into one row per
    event, keeping who was notified and highlighted."""
    from hs.db.migrations import _statements, list_migrations

    async def up_to_6(c: Any) -> None:
        await c.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, _, sql in list_migrations():
            if version <= 6:
                for stmt in _statements(sql, c.engine):
                    await c.execute(stmt)
                await c.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        await c.executemany(
            "INSERT INTO event_push_actions (user_id, room_id, stream_ordering, thread_id, event_id, highlight)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [("@b:x", "!r:x", 5, "", "$e5", 0), ("@a:x", "!r:x", 5, "", "$e5", 1), ("@a:x", "!r:x", 7, "$t", "$e7", 0)])

    await db.run_transaction("setup", up_to_6)
    assert await apply_migrations(db) >= 1
    rows = await db.fetch("SELECT stream_ordering, event_id, thread_id, notify_users, highlight_users"
                          " FROM event_notifications ORDER BY stream_ordering")
    import json

    assert [(r["stream_ordering"], r["event_id"], r["thread_id"], sorted(json.loads(r["notify_users"])),
             sorted(json.loads(r["highlight_users"]))) for r in rows] == [
        (5, "$e5", "", ["@a:x", "@b:x"], ["@a:x"]), (7, "$e7", "$t", ["@a:x"], [])]


async def test_sqlite_copies_its_write_ahead_log_into_the_database_file_in_the_background(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits never wait for a checkpoint's fsync (SQLite's own runs inside a commit): a checkpointer
    of its own moves committed rows into the main file, and closing leaves no log behind."""
    import shutil
    import sqlite3

    from hs.db import pool

    monkeypatch.setattr(pool, "CHECKPOINT_INTERVAL_S", 0.05)
    path = tmp_path / "hs.db"
    db = pool.SqliteDatabase(str(path))
    await db.open()
    await db.execute("CREATE TABLE t (n INTEGER)")
    for n in range(50):
        await db.execute("INSERT INTO t (n) VALUES ($1)", n)
    await asyncio.sleep(0.3)
    copy = tmp_path / "main-file-only.db"
    shutil.copy(path, copy)  # the database file without its -wal file
    assert sqlite3.connect(copy).execute("SELECT COUNT(*) FROM t").fetchone() == (50,)
    await db.close()
    wal = tmp_path / "hs.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


async def _create_synapse_schema(db: Database) -> None:
    """The part of a Synapse database the check looks at: its bookkeeping (common/schema_version.sql,
    a single-row schema_version with `lock` and `upgraded`) and some of its tables, among them names hs
    uses too (users, room_memberships) and none of hs's `receipts`."""
    async def create(c: Any) -> None:
        for stmt in (
            "CREATE TABLE schema_version (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE, version INTEGER NOT NULL,"
            " upgraded BOOL NOT NULL, CHECK (lock = 'X'))",
            "CREATE TABLE schema_compat_version (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,"
            " compat_version INTEGER NOT NULL, CHECK (lock = 'X'))",
            "CREATE TABLE applied_schema_deltas (version INTEGER NOT NULL, file TEXT NOT NULL, UNIQUE (version, file))",
            "CREATE TABLE users (name TEXT, password_hash TEXT, creation_ts BIGINT, admin SMALLINT DEFAULT 0 NOT NULL)",
            "CREATE TABLE event_json (event_id TEXT NOT NULL, room_id TEXT NOT NULL, internal_metadata TEXT NOT NULL,"
            " json TEXT NOT NULL, format_version INTEGER)",
            "CREATE TABLE room_memberships (event_id TEXT NOT NULL, user_id TEXT NOT NULL, sender TEXT NOT NULL,"
            " room_id TEXT NOT NULL, membership TEXT NOT NULL)",
            "CREATE TABLE receipts_linearized (stream_id BIGINT NOT NULL, room_id TEXT NOT NULL,"
            " receipt_type TEXT NOT NULL, user_id TEXT NOT NULL, event_id TEXT NOT NULL, data TEXT NOT NULL)",
        ):
            await c.execute(stmt)
        await c.execute("INSERT INTO schema_version (version, upgraded) VALUES (88, TRUE)")
        await c.execute("INSERT INTO schema_compat_version (compat_version) VALUES (83)")

    await db.run_transaction("synapse", create)


async def _tables(db: Database) -> set[str]:
    if db.engine == "postgres":
        rows = await db.fetch("SELECT table_name AS name FROM information_schema.tables"
                              " WHERE table_schema = current_schema()")
    else:
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r["name"] for r in rows}


async def test_a_synapse_database_is_refused_before_anything_is_changed(db: Database) -> None:
    """A Synapse database has a schema_version too, at a higher number than hs's: without the check
    hs migrated nothing and then failed on its first missing table (`no such table: receipts`)."""
    from hs.db.pool import DatabaseStartupError

    await _create_synapse_schema(db)
    before = await _tables(db)
    with pytest.raises(DatabaseStartupError) as refused:
        await apply_migrations(db)
    assert str(refused.value) == (
        f"the {db.description} is a Synapse database (Synapse schema version 88, tables such as"
        " applied_schema_deltas, schema_compat_version, event_json, receipts_linearized): hs cannot use a"
        " Synapse database directly. Point `database` at a new, empty database for hs (a tool to port a"
        " Synapse server's data into hs does not exist yet)")
    assert await _tables(db) == before
    assert await db.fetch("SELECT version, upgraded FROM schema_version") == [{"version": 88, "upgraded": True}]


async def test_a_synapse_database_is_recognised_by_its_schema_version_alone(db: Database) -> None:
    """Synapse's separate state database has only the common tables and state groups."""
    from hs.db.pool import DatabaseStartupError

    await db.execute("CREATE TABLE schema_version (lock CHAR(1) NOT NULL DEFAULT 'X' UNIQUE,"
                     " version INTEGER NOT NULL, upgraded BOOL NOT NULL)")
    await db.execute("INSERT INTO schema_version (version, upgraded) VALUES (80, FALSE)")
    with pytest.raises(DatabaseStartupError, match=r"is a Synapse database \(Synapse schema version 80,"
                                                   r" tables such as schema_version\)"):
        await apply_migrations(db)


async def test_another_applications_tables_are_refused_and_listed(db: Database) -> None:
    from hs.db.pool import DatabaseStartupError

    await db.execute("CREATE TABLE widgets (id INTEGER)")
    await db.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(DatabaseStartupError) as refused:
        await apply_migrations(db)
    assert str(refused.value) == (
        f"the {db.description} holds 2 table(s) that hs did not create (orders, widgets) and no hs"
        " schema_version: hs needs an empty database of its own. Point `database` at a new, empty database"
        " (or empty this one if its contents are not needed)")
    assert await _tables(db) == {"orders", "widgets"}


@pytest.mark.parametrize("engine", ["postgres"])
async def test_a_worker_refuses_a_synapse_database_instead_of_waiting_for_migrations(db: Database) -> None:
    """Synapse's schema_version is above hs's latest, so a worker would have taken it as migrated."""
    from hs.db.migrations import wait_for_migrations
    from hs.db.pool import DatabaseStartupError

    await _create_synapse_schema(db)
    with pytest.raises(DatabaseStartupError, match="is a Synapse database"):
        await wait_for_migrations(db, timeout=1)
