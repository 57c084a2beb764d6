"""Erased users: which accounts were deactivated with `erase: true` (the erased_users table)."""

from __future__ import annotations

from collections.abc import Iterable

from hs.db.pool import Database
from hs.db.stores.where import Where

# Placeholders per query when asking about many senders at once.
BATCH = 500


class ErasureStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_erased(self, user_id: str) -> None:
        await self.db.execute(
            "INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING", user_id)

    async def erased_among(self, user_ids: Iterable[str]) -> set[str]:
        """Those of `user_ids` who are erased."""
        wanted = sorted(set(user_ids))
        found: set[str] = set()
        for i in range(0, len(wanted), BATCH):
            where = Where()
            marks = where.marks(wanted[i:i + BATCH])
            rows = await self.db.fetch(f"SELECT user_id FROM erased_users WHERE user_id IN ({marks})", *where.args)
            found.update(str(r["user_id"]) for r in rows)
        return found
