"""Numbered schema migrations (`hs/db/migrations/NNN_name.sql`), applied in order at start-up.

Several processes may start at once against one PostgreSQL; an advisory lock makes exactly one of them
migrate while the others wait. Before anything is created, the database must be empty or hs's own: a
Synapse database, or any other application's tables, is refused with what was found.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from hs.db.pool import Connection, Database, DatabaseStartupError

logger = logging.getLogger(__name__)

# What the two engines spell differently, as placeholders in the migration files.
_ENGINE_TYPES = {
    "postgres": {
        "{BLOB}": "BYTEA",
        "{USERS_JSON}": "COALESCE(json_agg(user_id ORDER BY user_id)::text, '[]')",
        "{HIGHLIGHT_USERS_JSON}": "COALESCE((json_agg(user_id ORDER BY user_id) FILTER (WHERE highlight = 1))::text, '[]')",
        "{REL_TYPE}": "(json::jsonb -> 'content' -> 'm.relates_to' ->> 'rel_type')",
        "{REL_EVENT_ID}": "(json::jsonb -> 'content' -> 'm.relates_to' ->> 'event_id')",
        "{SERIAL_PK}": "BIGSERIAL PRIMARY KEY",
    },
    "sqlite": {
        "{BLOB}": "BLOB",
        "{USERS_JSON}": "json_group_array(user_id)",
        "{HIGHLIGHT_USERS_JSON}": "COALESCE(json_group_array(user_id) FILTER (WHERE highlight = 1), '[]')",
        "{REL_TYPE}": "json_extract(json, '$.content.\"m.relates_to\".rel_type')",
        "{REL_EVENT_ID}": "json_extract(json, '$.content.\"m.relates_to\".event_id')",
        "{SERIAL_PK}": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
}
_MIGRATION_LOCK_ID = 0x68735F6D  # "hs_m"


# Tables Synapse creates and hs does not (its bookkeeping and its event storage), which tell its
# database apart from hs's; names both create (users, events, rooms, ...) say nothing.
SYNAPSE_TABLES = ("applied_schema_deltas", "schema_compat_version", "background_updates", "event_json",
                  "event_edges", "receipts_linearized", "state_group_edges", "user_ips")
# Columns of Synapse's single-row schema_version (hs's has only `version`).
SYNAPSE_SCHEMA_VERSION_COLUMNS = {"lock", "upgraded"}


def list_migrations() -> list[tuple[int, str, str]]:
    out = []
    folder = resources.files("hs.db") / "migrations"
    for entry in folder.iterdir():
        m = re.match(r"(\d+)_.*\.sql$", entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(out)


def _statements(sql: str, engine: str) -> list[str]:
    for key, value in _ENGINE_TYPES[engine].items():
        sql = sql.replace(key, value)
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


async def _table_names(conn: Connection) -> set[str]:
    if conn.engine == "postgres":
        rows = await conn.fetch("SELECT table_name AS name FROM information_schema.tables"
                                " WHERE table_schema = current_schema()")
    else:
        rows = await conn.fetch("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                                " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
    return {str(r["name"]).lower() for r in rows}


async def _column_names(conn: Connection, table: str) -> set[str]:
    if conn.engine == "postgres":
        rows = await conn.fetch("SELECT column_name AS name FROM information_schema.columns"
                                " WHERE table_schema = current_schema() AND table_name = $1", table)
    else:
        rows = await conn.fetch("SELECT name FROM pragma_table_info($1)", table)
    return {str(r["name"]).lower() for r in rows}


async def check_schema_is_ours(conn: Connection, description: str) -> None:
    """Refuse a database hs did not create, saying what is in it, before any migration touches it.

    Without this a Synapse database passes for an hs one (both keep a `schema_version`, Synapse's at a
    higher number), nothing is migrated, and start-up dies later on a missing hs table."""
    tables = await _table_names(conn)
    if not tables:
        return
    columns = await _column_names(conn, "schema_version") if "schema_version" in tables else set()
    synapse_tables = [t for t in SYNAPSE_TABLES if t in tables]
    if synapse_tables or columns & SYNAPSE_SCHEMA_VERSION_COLUMNS:
        version = ""
        if "version" in columns:
            found = await conn.fetchval("SELECT MAX(version) FROM schema_version")
            version = f"Synapse schema version {found}, "
        raise DatabaseStartupError(
            f"the {description} is a Synapse database ({version}tables such as"
            f" {', '.join(synapse_tables or ['schema_version'])}): hs cannot use a Synapse database directly."
            " Point `database` at a new, empty database for hs (a tool to port a Synapse server's data into"
            " hs does not exist yet)")
    if columns != {"version"}:
        listed = sorted(tables)
        shown = ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
        raise DatabaseStartupError(
            f"the {description} holds {len(listed)} table(s) that hs did not create ({shown}) and no hs"
            " schema_version: hs needs an empty database of its own. Point `database` at a new, empty"
            " database (or empty this one if its contents are not needed)")


async def apply_migrations(db: Database) -> int:
    """Apply every migration newer than the database's version; returns how many ran."""

    async def migrate(conn: Connection) -> int:
        if conn.engine == "postgres":
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
        await check_schema_is_ours(conn, db.description)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0
        ran = 0
        for version, name, sql in list_migrations():
            if version <= current:
                continue
            logger.info("applying migration %s", name)
            for stmt in _statements(sql, conn.engine):
                await conn.execute(stmt)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            ran += 1
        return ran

    return await db.run_transaction("migrate", migrate)


async def wait_for_migrations(db: Database, timeout: float = 120.0) -> None:
    """Workers do not migrate: they wait until the main process has brought the schema up to date."""
    import asyncio

    latest = max(v for v, _n, _s in list_migrations())
    deadline = asyncio.get_running_loop().time() + timeout

    async def check(conn: Connection) -> None:
        await check_schema_is_ours(conn, db.description)

    await db.run_transaction("check_schema", check)
    while True:
        try:
            current = await db.fetchval("SELECT MAX(version) FROM schema_version") or 0
        except Exception:
            current = 0
        if current >= latest:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"database schema is at version {current}, need {latest}: start the main process"
                               " (or run `hs migrate`) first")
        logger.info("waiting for the main process to migrate the schema (%s < %s)", current, latest)
        await asyncio.sleep(0.5)
