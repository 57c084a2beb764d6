"""Pushers (who wants push notifications sent where) and the notifications they deliver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hs.db.pool import Connection, Database
from hs.util import json_dumps, json_loads

JsonDict = dict[str, Any]
PusherKey = tuple[str, str, str]  # app_id, pushkey, user_id


def pusher_key(row: JsonDict) -> PusherKey:
    return row["app_id"], row["pushkey"], row["user_id"]


class PusherStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _decode(row: JsonDict) -> JsonDict:
        return {**row, "data": json_loads(row["data"])}

    async def get_pushers(self, user_id: str) -> list[JsonDict]:
        rows = await self.db.fetch("SELECT * FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey", user_id)
        return [self._decode(r) for r in rows]

    async def get_pusher(self, key: PusherKey) -> JsonDict | None:
        row = await self.db.fetchrow(
            "SELECT * FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id = $3", *key)
        return None if row is None else self._decode(row)

    async def get_pushers_of(self, user_ids: Sequence[str]) -> list[JsonDict]:
        out: list[JsonDict] = []
        users = sorted(set(user_ids))
        for i in range(0, len(users), 500):
            chunk = users[i:i + 500]
            placeholders = ",".join(f"${n + 1}" for n in range(len(chunk)))
            out.extend(self._decode(r) for r in await self.db.fetch(
                f"SELECT * FROM pushers WHERE kind = 'http' AND user_id IN ({placeholders})", *chunk))
        return out

    async def lowest_position(self) -> int | None:
        value = await self.db.fetchval("SELECT MIN(last_stream_ordering) FROM pushers WHERE kind = 'http'")
        return None if value is None else int(value)

    async def lowest_position_per_user(self) -> dict[str, int]:
        """user -> the lowest delivered position among their pushers (for a shard of the users)."""
        rows = await self.db.fetch(
            "SELECT user_id, MIN(last_stream_ordering) AS pos FROM pushers WHERE kind = 'http' GROUP BY user_id")
        return {r["user_id"]: int(r["pos"]) for r in rows}

    async def set_pusher(self, user_id: str, device_id: str | None, pusher: JsonDict, now_ms: int,
                         position: int, append: bool) -> None:
        """Create or update the user's pusher for (app_id, pushkey); unless `append`, the same
        app_id and pushkey of other users go (the device moved to another account)."""
        async def txn(c: Connection) -> None:
            existing = await c.fetchval(
                "SELECT last_stream_ordering FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id = $3",
                pusher["app_id"], pusher["pushkey"], user_id)
            if not append:
                await c.execute("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                                pusher["app_id"], pusher["pushkey"], user_id)
            await c.execute("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id = $3",
                            pusher["app_id"], pusher["pushkey"], user_id)
            await c.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, device_id, app_display_name,"
                " device_display_name, profile_tag, lang, data, pushkey_ts, last_stream_ordering)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                user_id, pusher["app_id"], pusher["pushkey"], pusher["kind"], device_id,
                pusher["app_display_name"], pusher["device_display_name"], pusher.get("profile_tag"),
                pusher["lang"], json_dumps(pusher["data"]), now_ms,
                int(existing) if existing is not None else position)

        await self.db.run_transaction("set_pusher", txn)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self.db.execute("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id = $3",
                              app_id, pushkey, user_id)

    async def set_position(self, key: PusherKey, position: int) -> None:
        await self.db.execute(
            "UPDATE pushers SET last_stream_ordering = $4 WHERE app_id = $1 AND pushkey = $2 AND user_id = $3"
            " AND last_stream_ordering < $4", *key, position)

    async def notifications_between(self, after: int, upto: int, limit: int) -> list[JsonDict]:
        """Notification rows in (after, upto], by position: room, position, event, who is notified."""
        rows = await self.db.fetch(
            "SELECT room_id, stream_ordering, event_id, notify_users, highlight_users FROM event_notifications"
            " WHERE stream_ordering > $1 AND stream_ordering <= $2 ORDER BY stream_ordering LIMIT $3",
            after, upto, limit)
        return [{**r, "notify_users": json_loads(r["notify_users"]),
                 "highlight_users": json_loads(r["highlight_users"])} for r in rows]

    async def unread_room_count(self, user_id: str) -> int:
        """The badge: how many rooms have unread notifications for the user."""
        value = await self.db.fetchval(
            "SELECT COUNT(DISTINCT room_id) FROM event_push_summary WHERE user_id = $1 AND notif_count > 0",
            user_id)
        return int(value or 0)
