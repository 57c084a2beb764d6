"""SQL of the admin API on federation destinations (hs/api/client/admin_federation.py): listing
`federation_destinations` a page at a time, and the rooms this server shares with a destination.

The destinations' own rows (one destination, resetting its backoff) are FederationSendingStore's; this
store only adds the admin's reads, so the sender's store stays about sending.
"""

from __future__ import annotations

from typing import Any

from hs.db.pool import Database
from hs.db.stores.federation_sending import DestinationRow
from hs.db.stores.where import Where
from hs.util import like_pattern

# The orders Synapse's admin API offers (its DestinationSortOrder), each a column of the table.
DESTINATION_ORDERS = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                      "last_successful_stream_ordering")


def _suffix_pattern(suffix: str) -> str:
    """A LIKE ... ESCAPE '\\' pattern for strings ending with `suffix` (its wildcards escaped)."""
    return "%" + suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class FederationAdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_destinations(self, offset: int, limit: int, order_by: str, descending: bool,
                                contains: str | None) -> tuple[list[DestinationRow], int]:
        """(one page of destinations, how many match in all), ordered by `order_by` then by name.

        `contains` is a case-insensitive substring of the name, as Synapse's `destination` filter
        (its own `%` and `_` are literal here; Synapse passes them on as wildcards). NULLs (a
        `failure_ts` while reachable, a `last_successful_stream_ordering` before anything was sent)
        sort as the largest values on both engines, as PostgreSQL sorts them by default: SQLite
        alone would put them first.
        """
        if order_by not in DESTINATION_ORDERS:  # the handler checked it; the column goes into the SQL
            raise ValueError(f"unknown order {order_by!r}")
        where = Where()
        if contains:
            where.add("LOWER(destination) LIKE {} ESCAPE '\\'", like_pattern(contains))
        total = await self.db.fetchval(f"SELECT COUNT(*) FROM federation_destinations WHERE {where}",
                                       *where.args)
        direction = "DESC NULLS FIRST" if descending else "ASC NULLS LAST"
        rows = await self.db.fetch(
            "SELECT destination, last_successful_stream_ordering, retry_last_ts, retry_interval, failure_ts,"
            f" lease_owner, lease_expires_ts FROM federation_destinations WHERE {where}"
            f" ORDER BY {order_by} {direction}, destination ASC"
            f" LIMIT {where.arg(limit)} OFFSET {where.arg(offset)}", *where.args)
        return [_destination(r) for r in rows], int(total or 0)

    async def destination_rooms(self, destination: str, offset: int, limit: int,
                                descending: bool) -> tuple[list[tuple[str, int]], int]:
        """(one page of (room_id, stream ordering) ordered by room ID, how many rooms in all): the rooms
        where a user of `destination` is joined now, each with the stream ordering of its latest event.

        Synapse reads its `destination_rooms` table (the rooms it has sent the destination events
        for, and the latest such event); hs keeps no such table, so the room's current members stand
        in for it. A room no local user is in any more still counts while the destination's users
        are joined in its last known state, as Synapse's table keeps such rooms too.
        """
        pattern = _suffix_pattern(":" + destination)
        members = ("SELECT DISTINCT room_id FROM current_state_events WHERE type = 'm.room.member'"
                   " AND membership = 'join' AND state_key LIKE $1 ESCAPE '\\'")
        total = await self.db.fetchval(f"SELECT COUNT(*) FROM ({members}) m", pattern)
        order = "DESC" if descending else "ASC"
        rows = await self.db.fetch(
            "SELECT m.room_id, (SELECT MAX(e.stream_ordering) FROM events e WHERE e.room_id = m.room_id)"
            f" AS stream_ordering FROM ({members}) m ORDER BY m.room_id {order} LIMIT $2 OFFSET $3",
            pattern, limit, offset)
        return [(r["room_id"], int(r["stream_ordering"] or 0)) for r in rows], int(total or 0)


def _destination(r: Any) -> DestinationRow:
    return DestinationRow(r["destination"], r["last_successful_stream_ordering"], int(r["retry_last_ts"]),
                          int(r["retry_interval"]), r["failure_ts"], r["lease_owner"], int(r["lease_expires_ts"]))
