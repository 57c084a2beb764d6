"""Account data: a user's global (room_id '') and per-room config, incl. m.tag room tags."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.ignored_users import IGNORED_USER_LIST, ignored_in, replace_ignored
from hs.util import json_dumps, json_loads

GLOBAL = ""


class AccountDataStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
            user_id, room_id, data_type)
        return None if raw is None else dict(json_loads(raw))

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any],
                  stream_id: int) -> None:
        text = json_dumps(content)

        async def txn(c: Connection) -> None:
            await c.execute(
                "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content,"
                " stream_id = excluded.stream_id",
                user_id, room_id, data_type, text, stream_id)
            if room_id == GLOBAL and data_type == IGNORED_USER_LIST:
                # The ignore index (hs/db/stores/ignored_users.py) changes with the list, atomically.
                await replace_ignored(c, user_id, ignored_in(content, user_id))

        await self.db.run_transaction("put_account_data", txn)

    async def get_changed(self, user_id: str, after: int, upto: int) -> list[dict[str, Any]]:
        """Rows (room_id, type, content) of the user written in the stream range (after, upto]."""
        rows = await self.db.fetch(
            "SELECT room_id, type, content FROM account_data"
            " WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
            user_id, after, upto)
        return [{"room_id": r["room_id"], "type": r["type"], "content": json_loads(r["content"])} for r in rows]

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM account_data") or 0)
