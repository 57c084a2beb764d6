"""Content reports: what users reported, for the server's admins."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.db.stores.where import Where
from hs.util import now_ms, random_string


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, kind: str, reporter: str, reason: str | None, room_id: str | None = None,
                  event_id: str | None = None, target_user_id: str | None = None) -> str:
        """Store a report; its time is after every earlier report's of the kind, so reports received in
        the same millisecond still list in the order they came (report IDs are random)."""
        report_id = random_string(24)
        await self.db.execute(
            "INSERT INTO content_reports (report_id, kind, room_id, event_id, target_user_id, reporter, reason,"
            " received_ts) SELECT $1, $2, $3, $4, $5, $6, $7,"
            " CASE WHEN MAX(received_ts) >= $8 THEN MAX(received_ts) + 1 ELSE $8 END"
            " FROM content_reports WHERE kind = $2",
            report_id, kind, room_id, event_id, target_user_id, reporter, reason, now_ms())
        return report_id

    async def list(self, kind: str, offset: int, limit: int, newest_first: bool, room_id: str | None,
                   reporter: str | None) -> tuple[list[dict[str, Any]], int]:
        """(reports of one kind, in receiving order, one page; how many match in all)."""
        where = Where()
        where.add("kind = {}", kind)
        if room_id is not None:
            where.add("room_id = {}", room_id)
        if reporter is not None:
            where.add("reporter = {}", reporter)
        total = await self.db.fetchval(f"SELECT COUNT(*) FROM content_reports WHERE {where}", *where.args)
        order = "DESC" if newest_first else "ASC"
        rows = await self.db.fetch(
            f"SELECT * FROM content_reports WHERE {where} ORDER BY received_ts {order}, report_id {order}"
            f" LIMIT {where.arg(limit)} OFFSET {where.arg(offset)}", *where.args)
        return rows, int(total or 0)
