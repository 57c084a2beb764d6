"""`hs port-db`: copy a stopped hs's SQLite database into an empty PostgreSQL database.

`make run` starts on SQLite while a cluster needs PostgreSQL; this moves the data across. The target's
schema comes from hs's own migrations (so it is exactly what hs on PostgreSQL expects), then each table's
rows are copied in rowid order, a batch per transaction together with the batch's progress row in
`port_db_progress`: an interrupted run is resumed exactly where its last committed batch ended. At the
end BIGSERIAL sequences are moved past the copied ids and row counts are compared table by table.

Stream positions need no rewriting: the `stream_positions` rows are copied as they are, and each stream's
PostgreSQL sequence is created at start-up from the MAX of its table (`make_position_source`), so new
writes continue after the copied ones.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from hs.db.migrations import apply_migrations, list_migrations
from hs.db.pool import Connection, Database

PROGRESS_TABLE = "port_db_progress"


class PortError(Exception):
    """A reason the port cannot start or continue, for the operator (no traceback)."""


@dataclass
class PortResult:
    tables: dict[str, int] = field(default_factory=dict)  # rows copied per table, in this run
    complete: bool = False
    mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)  # table -> (sqlite, postgres)


def open_source(path: str) -> sqlite3.Connection:
    """Read-only, so a mistaken path never creates an empty database nor changes the original."""
    if not os.path.exists(path):
        raise PortError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = None
    return conn


def _source_tables(src: sqlite3.Connection) -> list[str]:
    rows = src.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                       " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").fetchall()
    return [str(r[0]) for r in rows if r[0] != "schema_version"]


def _source_columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in src.execute(f'PRAGMA table_info("{table}")').fetchall()]


def _converter(pg_type: str) -> Callable[[Any], Any]:
    """SQLite keeps what it was given; asyncpg wants exactly the Python type of each PostgreSQL column."""
    if pg_type in ("bigint", "integer", "smallint"):
        return lambda v: v if v is None else int(v)
    if pg_type == "boolean":
        return lambda v: v if v is None else bool(v)
    if pg_type == "bytea":
        return lambda v: v.encode() if isinstance(v, str) else v
    if pg_type in ("double precision", "real", "numeric"):
        return lambda v: v if v is None else float(v)
    if pg_type == "text":
        return lambda v: v.decode() if isinstance(v, bytes) else (v if v is None or isinstance(v, str) else str(v))
    return lambda v: v


async def _target_columns(db: Database, table: str) -> dict[str, str]:
    rows = await db.fetch("SELECT column_name, data_type FROM information_schema.columns"
                          " WHERE table_schema = current_schema() AND table_name = $1", table)
    return {str(r["column_name"]): str(r["data_type"]) for r in rows}


async def _target_tables(db: Database) -> set[str]:
    rows = await db.fetch("SELECT table_name FROM information_schema.tables"
                          " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
    return {str(r["table_name"]) for r in rows}


async def _check_target(db: Database) -> None:
    """An empty database, or one a previous port run started (it has the progress table)."""
    tables = await _target_tables(db)
    if not tables or PROGRESS_TABLE in tables:
        return
    raise PortError(f"the target {db.description} is not empty ({len(tables)} tables) and holds no"
                    f" {PROGRESS_TABLE}: port-db only fills a new, empty database (or resumes its own run)")


def _check_source_version(src: sqlite3.Connection) -> None:
    latest = max(v for v, _n, _s in list_migrations())
    try:
        version = src.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    except sqlite3.Error:
        raise PortError("the SQLite database is not an hs database (no schema_version)") from None
    if version != latest:
        raise PortError(f"the SQLite database is at schema version {version} and this hs at {latest}: run"
                        " `hs migrate` (or start hs once) on the SQLite database with this version first")


class _Progress:
    """One line per table on stderr, rewritten in place: `events 12000/50000 24%`."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    def show(self, table: str, done: int, total: int, final: bool = False) -> None:
        if self.out is None:
            return
        pct = 100 if total == 0 else done * 100 // total
        end = "\n" if final else ""
        self.out.write(f"\r{table} {done}/{total} {pct}%{end}")
        self.out.flush()


async def port(src_path: str, db: Database, *, batch_size: int = 1000, max_batches: int | None = None,
               progress: TextIO | None = sys.stderr) -> PortResult:
    """Copy every table; `max_batches` stops early (as an interruption would), leaving the run resumable."""
    src = open_source(src_path)
    try:
        # One read transaction for the whole run: every table is read from the same snapshot.
        src.execute("BEGIN")
        return await _port(src, db, batch_size, max_batches, _Progress(progress))
    finally:
        src.close()


async def _port(src: sqlite3.Connection, db: Database, batch_size: int, max_batches: int | None,
                bar: _Progress) -> PortResult:
    if db.engine != "postgres":
        raise PortError("the target database in the config must be PostgreSQL")
    _check_source_version(src)
    await _check_target(db)
    await apply_migrations(db)
    targets = await _target_tables(db)
    if PROGRESS_TABLE not in targets:
        await _start_run(db, [t for t in _source_tables(src) if t in targets])
    result = PortResult()
    batches = 0
    for table in _source_tables(src):
        if table not in targets:
            raise PortError(f"table {table} of the SQLite database does not exist in the migrated target")
        row = await db.fetchrow(f"SELECT last_rowid, copied, done FROM {PROGRESS_TABLE} WHERE table_name = $1",
                                table)
        last, copied = (int(row["last_rowid"]), int(row["copied"])) if row else (0, 0)
        total = int(src.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        if row and row["done"]:
            bar.show(table, copied, total, final=True)
            continue
        types = await _target_columns(db, table)
        columns = [c for c in _source_columns(src, table) if c in types]
        convert = [_converter(types[c]) for c in columns]
        names = ", ".join(f'"{c}"' for c in columns)
        insert = (f'INSERT INTO "{table}" ({names}) VALUES'
                  f" ({', '.join(f'${i + 1}' for i in range(len(columns)))})")
        select = f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT ?'
        result.tables[table] = 0
        while True:
            if max_batches is not None and batches >= max_batches:
                bar.show(table, copied, total, final=True)
                return result
            rows = src.execute(select, (last, batch_size)).fetchall()
            if not rows:
                break
            values = [tuple(f(v) for f, v in zip(convert, r[1:], strict=True)) for r in rows]
            new_last = int(rows[-1][0])
            new_copied = copied + len(rows)

            await _copy_batch(db, table, insert, values, new_last, new_copied)
            last, copied = new_last, new_copied
            result.tables[table] += len(rows)
            batches += 1
            bar.show(table, copied, total)
        await _record_db(db, table, last, copied)
        bar.show(table, copied, total, final=True)
    await _reset_sequences(src, db)
    result.mismatches = await verify(src, db)
    result.complete = True
    return result


async def _start_run(db: Database, tables: list[str]) -> None:
    """Some migrations seed rows (e.g. a pending-backfill marker); the SQLite database holds the same
    tables' true contents, so the seeds go before copying. Done once, with the progress table's creation."""

    async def txn(c: Connection) -> None:
        if tables:
            await c.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
        await c.execute(f"CREATE TABLE {PROGRESS_TABLE} (table_name TEXT PRIMARY KEY, last_rowid BIGINT NOT NULL,"
                        " copied BIGINT NOT NULL, done INTEGER NOT NULL DEFAULT 0)")

    await db.run_transaction("port_start", txn)


async def _copy_batch(db: Database, table: str, insert: str, values: list[tuple[Any, ...]], last: int,
                      copied: int) -> None:
    """The rows and the progress row that says they are there commit together: resuming is exact."""

    async def txn(c: Connection) -> None:
        await c.executemany(insert, values)
        await _record(c, table, last, copied, False)

    await db.run_transaction("port_batch", txn)


async def _record(c: Connection, table: str, last: int, copied: int, done: bool) -> None:
    await c.execute(f"INSERT INTO {PROGRESS_TABLE} (table_name, last_rowid, copied, done) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (table_name) DO UPDATE SET last_rowid = excluded.last_rowid,"
                    " copied = excluded.copied, done = excluded.done", table, last, copied, int(done))


async def _record_db(db: Database, table: str, last: int, copied: int) -> None:
    async def txn(c: Connection) -> None:
        await _record(c, table, last, copied, True)

    await db.run_transaction("port_done", txn)


async def _reset_sequences(src: sqlite3.Connection, db: Database) -> None:
    """BIGSERIAL columns were filled with explicit ids: their sequences must continue after them, and
    after any id SQLite's AUTOINCREMENT handed out to rows deleted since (ids are never reused)."""
    try:
        handed_out = {str(t): int(n) for t, n in src.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.Error:  # no AUTOINCREMENT table was ever written to
        handed_out = {}
    rows = await db.fetch("SELECT table_name, column_name FROM information_schema.columns"
                          " WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'")
    for r in rows:
        table, column = str(r["table_name"]), str(r["column_name"])
        await db.fetchval(f"SELECT setval(pg_get_serial_sequence($1, $2), GREATEST($3,"
                          f' COALESCE((SELECT MAX("{column}") FROM "{table}"), 0)) + 1, false)',
                          table, column, handed_out.get(table, 0))


async def verify(src: sqlite3.Connection, db: Database) -> dict[str, tuple[int, int]]:
    """Tables whose row counts differ between the SQLite source and the PostgreSQL target."""
    out = {}
    for table in _source_tables(src):
        want = int(src.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        got = int(await db.fetchval(f'SELECT COUNT(*) FROM "{table}"') or 0)
        if want != got:
            out[table] = (want, got)
    return out
