"""Numbered schema migrations (`hs/db/migrations/NNN_name.sql`), applied in order at start-up.

Several processes may start at once against one PostgreSQL; an advisory lock makes exactly one of them
migrate while the others wait.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from hs.db.pool import Connection, Database

logger = logging.getLogger(__name__)

# What the two engines spell differently, as placeholders in the migration files.
_ENGINE_TYPES = {
    "postgres": {
        "{BLOB}": "BYTEA",
        "{USERS_JSON}": "COALESCE(json_agg(user_id ORDER BY user_id)::text, '[]')",
        "{HIGHLIGHT_USERS_JSON}": "COALESCE((json_agg(user_id ORDER BY user_id) FILTER (WHERE highlight = 1))::text, '[]')",
        "{REL_TYPE}": "(json::jsonb -> 'content' -> 'm.relates_to' ->> 'rel_type')",
        "{REL_EVENT_ID}": "(json::jsonb -> 'content' -> 'm.relates_to' ->> 'event_id')",
    },
    "sqlite": {
        "{BLOB}": "BLOB",
        "{USERS_JSON}": "json_group_array(user_id)",
        "{HIGHLIGHT_USERS_JSON}": "COALESCE(json_group_array(user_id) FILTER (WHERE highlight = 1), '[]')",
        "{REL_TYPE}": "json_extract(json, '$.content.\"m.relates_to\".rel_type')",
        "{REL_EVENT_ID}": "json_extract(json, '$.content.\"m.relates_to\".event_id')",
    },
}
_MIGRATION_LOCK_ID = 0x68735F6D  # "hs_m"


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


async def apply_migrations(db: Database) -> int:
    """Apply every migration newer than the database's version; returns how many ran."""

    async def migrate(conn: Connection) -> int:
        if conn.engine == "postgres":
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
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
