"""Reporting content to the server's admins (client-server spec, "Reporting content").

Event reports need the reporter joined to the room and able to see the event; room and user reports
need only that the room or (local) user exists. Reports are stored for the admins, who list them
with Synapse's admin API (`GET /_synapse/admin/v1/event_reports`, admins only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.db.stores.reports import ReportStore
from hs.errors import bad_json, not_found

if TYPE_CHECKING:
    from hs.server import HomeServer

MAX_REASON_LENGTH = 1000


def check_reason(body: dict[str, Any], required: bool) -> str | None:
    reason = body.get("reason")
    if reason is None:
        if required:
            raise bad_json("Missing 'reason' (it may be blank)")
        return None
    if not isinstance(reason, str):
        raise bad_json("'reason' must be a string")
    if len(reason) > MAX_REASON_LENGTH:
        raise bad_json(f"'reason' is longer than {MAX_REASON_LENGTH} characters")
    return reason


class ReportService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = ReportStore(hs.db)

    async def report_event(self, reporter: str, room_id: str, event_id: str, reason: str | None) -> None:
        membership = await self.hs.event_store.get_membership(room_id, reporter)
        event = await self.hs.event_store.get_event(event_id)
        if membership is None or membership[0] != "join" or event is None or event.room_id != room_id \
                or not await self.hs.visibility.is_visible(reporter, event, "join"):
            raise not_found("The event was not found or you are not joined to its room")
        await self.store.add("event", reporter, reason, room_id=room_id, event_id=event_id,
                             target_user_id=event.sender)

    async def report_room(self, reporter: str, room_id: str, reason: str | None) -> None:
        if not await self.hs.room_store.room_exists(room_id):
            raise not_found("The room was not found")
        await self.store.add("room", reporter, reason, room_id=room_id)

    async def report_user(self, reporter: str, user_id: str, reason: str | None) -> None:
        if user_id.endswith(":" + self.hs.server_name) and await self.hs.user_store.get_user(user_id) is None:
            raise not_found("The user was not found")
        await self.store.add("user", reporter, reason, target_user_id=user_id)

    async def list_event_reports(self, offset: int, limit: int, newest_first: bool, room_id: str | None,
                                 reporter: str | None) -> dict[str, Any]:
        """Synapse's admin API shape: {event_reports, total, next_token?}."""
        rows, total = await self.store.list("event", offset, limit, newest_first, room_id, reporter)
        reports = [{"id": r["report_id"], "received_ts": int(r["received_ts"]), "room_id": r["room_id"],
                    "event_id": r["event_id"], "user_id": r["reporter"], "reason": r["reason"],
                    "sender": r["target_user_id"]} for r in rows]
        body: dict[str, Any] = {"event_reports": reports, "total": total}
        if offset + len(rows) < total:
            body["next_token"] = offset + len(rows)
        return body
