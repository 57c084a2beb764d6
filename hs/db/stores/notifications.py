"""Stored notifications (`event_notifications`, one row per notifying event naming the users it
notified; written with the events by hs/db/stores/push.py): a user's, newest first, for
GET /notifications, and the pruning of old ones."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.util import json_dumps, like_pattern


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def for_user(self, user_id: str, before: int, limit: int, only_highlight: bool) -> list[dict[str, Any]]:
        """{room_id, stream_ordering, event_id, thread_id, highlight_users} of the notifications (or
        highlights) of `user_id` below position `before`, newest first."""
        # The user ID as it appears inside the JSON arrays of user IDs.
        pattern = like_pattern(json_dumps(user_id), fold_case=False)
        column = "highlight_users" if only_highlight else "notify_users"
        return await self.db.fetch(
            "SELECT room_id, stream_ordering, event_id, thread_id, highlight_users FROM event_notifications"
            f" WHERE stream_ordering < $1 AND {column} LIKE $2 ESCAPE '\\'"
            " ORDER BY stream_ordering DESC LIMIT $3", before, pattern, limit)

    async def delete_upto(self, position: int, batch: int) -> int:
        """Delete the notifications at positions up to `position`; returns how many. In batches, by
        position (indexed), so no transaction holds many row locks for long."""
        deleted = 0
        while True:
            upper = await self.db.fetchval(
                "SELECT MAX(stream_ordering) FROM (SELECT stream_ordering FROM event_notifications"
                " WHERE stream_ordering <= $1 ORDER BY stream_ordering LIMIT $2) AS batch", position, batch)
            if upper is None:
                return deleted
            count = await self.db.fetchval(
                "SELECT COUNT(*) FROM event_notifications WHERE stream_ordering <= $1", upper)
            await self.db.execute("DELETE FROM event_notifications WHERE stream_ordering <= $1", upper)
            deleted += int(count or 0)
            if int(upper) >= position:
                return deleted
