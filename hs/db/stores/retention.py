"""What background housekeeping needs of tables no other store prunes: old client transaction IDs,
and where in the events' positions a point in time falls (the cut for pruning by age)."""

from __future__ import annotations

from hs.db.pool import Database

TXN_ID_TABLES = ("event_txn_ids", "device_inbox_txns")


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def delete_transaction_ids_before(self, ts: int) -> None:
        """Forget the client transaction IDs (of events and of to-device messages) stored before `ts`."""
        for table in TXN_ID_TABLES:
            await self.db.execute(f"DELETE FROM {table} WHERE inserted_ts < $1", ts)

    async def position_before(self, ts: int) -> int | None:
        """The highest event position whose event is older than `ts` (None: none is), found by
        bisecting positions over the primary key: local events' timestamps grow with their positions
        (an event from a wrong clock only moves the cut a little)."""
        db = self.db
        lo = await db.fetchval("SELECT MIN(stream_ordering) FROM events")
        hi = await db.fetchval("SELECT MAX(stream_ordering) FROM events")
        if lo is None or hi is None:
            return None
        lo, hi = int(lo), int(hi)

        async def ts_at(position: int) -> int:
            value = await db.fetchval("SELECT origin_server_ts FROM events WHERE stream_ordering >= $1"
                                      " ORDER BY stream_ordering LIMIT 1", position)
            return int(value) if value is not None else 2 ** 62

        if await ts_at(lo) >= ts:
            return None
        while lo < hi:  # invariant: the event at or after `lo` is older than ts
            mid = (lo + hi + 1) // 2
            if await ts_at(mid) < ts:
                lo = mid
            else:
                hi = mid - 1
        return lo
