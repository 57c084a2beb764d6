"""GET /notifications: the events that notified a user, newest first (a client's notification panel).

Read from the stored notifications (`event_notifications`, one row per event naming the users it
notified), so it needs no per-user copy; the actions are the user's push rules evaluated again (the
stored row keeps only notify and highlight). `read` says whether the user's read receipt in the room
(unthreaded, or for the event's thread) covers the event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.notifications import NotificationStore
from hs.db.stores.push import read_positions
from hs.services.serialize import serialize_event
from hs.util import json_loads

if TYPE_CHECKING:
    from hs.server import HomeServer

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Rows read per query while looking for the user's notifications.
SCAN_BATCH = 200


class NotificationsService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = NotificationStore(hs.db)

    async def get(self, user_id: str, before: int | None, limit: int, only_highlight: bool) -> dict[str, Any]:
        """{notifications, next_token?}: up to `limit` of the user's notifications below position
        `before` (all when None)."""
        limit = min(max(limit, 1), MAX_LIMIT)
        upper = before if before is not None else 2 ** 62
        rows = await self.store.for_user(user_id, upper, limit + 1, only_highlight)
        more = len(rows) > limit
        rows = rows[:limit]
        read: dict[str, dict[str, int]] = {}
        out: list[dict[str, Any]] = []
        for r in rows:
            event = await self.hs.event_store.get_event(r["event_id"])
            if event is None:
                continue
            room_id = r["room_id"]
            if room_id not in read:
                read[room_id] = await read_positions(self.hs.db, user_id, room_id)
            positions = read[room_id]
            covered = max(positions.get("", 0), positions.get(r["thread_id"], 0))
            actions = await self.hs.push_evaluator.actions_for(event, user_id)
            if not actions or "notify" not in actions:
                # The user's rules changed since: show what was stored.
                highlighted = user_id in json_loads(r["highlight_users"])
                actions = ["notify", {"set_tweak": "highlight", "value": highlighted}]
            # `profile_tag` (of the rule that matched) is always there, null as in Synapse: push rules
            # carry no profile tags, and clients and test suites look for the key.
            out.append({"actions": actions, "event": serialize_event(event, include_room_id=True),
                        "profile_tag": None, "read": int(r["stream_ordering"]) <= covered, "room_id": room_id,
                        "ts": event.origin_server_ts})
        body: dict[str, Any] = {"notifications": out}
        if more and rows:
            body["next_token"] = str(rows[-1]["stream_ordering"])
        return body
