"""The ignore index: who ignores whom (the ignored_users table), a copy of the `ignored_users` keys of
every user's global `m.ignored_user_list` account data, indexed by the ignored user.

Push rule evaluation asks it which users ignore an event's sender (one query per batch of events)
rather than reading every room member's account data. The account data writer keeps it in step, in the
transaction that stores the list (hs/db/stores/account_data.py), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.where import Where
from hs.util import json_loads

IGNORED_USER_LIST = "m.ignored_user_list"
# Placeholders per query when asking about many senders at once.
BATCH = 500


def ignored_in(content: Any, user_id: str) -> frozenset[str]:
    """The users an `m.ignored_user_list` content ignores: its `ignored_users` keys; malformed content
    ignores nobody, and nobody ignores themselves (the one rule: the index and hs/services/visibility.py's
    reads both use it)."""
    if not isinstance(content, dict):
        return frozenset()
    users = content.get("ignored_users")
    if not isinstance(users, dict):
        return frozenset()
    return frozenset(u for u in users if isinstance(u, str) and u != user_id)


async def replace_ignored(c: Connection, user_id: str, ignored: Iterable[str]) -> None:
    """Make the index say that `user_id` ignores exactly `ignored` (inside the caller's transaction)."""
    await c.execute("DELETE FROM ignored_users WHERE ignorer_user_id = $1", user_id)
    rows = [(user_id, other) for other in sorted(set(ignored))]
    if rows:
        await c.executemany("INSERT INTO ignored_users (ignorer_user_id, ignored_user_id) VALUES ($1, $2)", rows)


class IgnoredUsersStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ignorers_of(self, senders: Iterable[str]) -> dict[str, set[str]]:
        """For each of `senders` that someone ignores, who ignores them."""
        wanted = sorted(set(senders))
        out: dict[str, set[str]] = {}
        for i in range(0, len(wanted), BATCH):
            where = Where()
            marks = where.marks(wanted[i:i + BATCH])
            rows = await self.db.fetch(
                f"SELECT ignorer_user_id, ignored_user_id FROM ignored_users WHERE ignored_user_id IN ({marks})",
                *where.args)
            for r in rows:
                out.setdefault(str(r["ignored_user_id"]), set()).add(str(r["ignorer_user_id"]))
        return out

    async def backfill_if_pending(self) -> bool:
        """Index the lists stored before the index existed (migration 026 leaves a mark for that);
        returns whether it did. Run by the account data writer at start-up, before it takes writes, so
        no list changes while it reads them; the mark goes in the same transaction."""

        async def txn(c: Connection) -> bool:
            if not await c.fetch("SELECT pending FROM ignored_users_backfill"):
                return False
            rows = await c.fetch("SELECT user_id, content FROM account_data WHERE room_id = '' AND type = $1",
                                 IGNORED_USER_LIST)
            for r in rows:
                try:
                    content = json_loads(r["content"])
                except ValueError:
                    content = None
                await replace_ignored(c, str(r["user_id"]), ignored_in(content, str(r["user_id"])))
            await c.execute("DELETE FROM ignored_users_backfill")
            return True

        return await self.db.run_transaction("backfill_ignored_users", txn)
