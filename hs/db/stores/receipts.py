"""Receipts: the latest m.read / m.read.private per (room, user, thread), with stream positions."""

from __future__ import annotations

from typing import Any

from hs.db.pool import Connection, Database
from hs.db.stores.push import recompute_push_summary

UNTHREADED = ""
READ_TYPES = ("m.read", "m.read.private")


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str,
                     event_stream_ordering: int, ts: int, stream_id: int) -> bool:
        """Store the receipt unless the existing one is for the same or a later event; returns whether
        it was stored. A stored read receipt also recounts the user's unread notifications in the room."""

        async def txn(c: Connection) -> bool:
            existing = await c.fetchval(
                "SELECT event_stream_ordering FROM receipts WHERE room_id = $1 AND receipt_type = $2"
                " AND user_id = $3 AND thread_id = $4", room_id, receipt_type, user_id, thread_id)
            if existing is not None and int(existing) >= event_stream_ordering:
                return False
            await c.execute(
                "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
                " event_stream_ordering, ts, stream_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET"
                " event_id = excluded.event_id, event_stream_ordering = excluded.event_stream_ordering,"
                " ts = excluded.ts, stream_id = excluded.stream_id",
                room_id, receipt_type, user_id, thread_id, event_id, event_stream_ordering, ts, stream_id)
            if receipt_type in READ_TYPES:
                await recompute_push_summary(c, user_id, room_id)
            return True

        return await self.db.run_transaction("upsert_receipt", txn)

    async def get_between(self, after: int, upto: int) -> list[dict[str, Any]]:
        """Receipts written in the stream range (after, upto], all rooms."""
        return await self.db.fetch(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts"
            " WHERE stream_id > $1 AND stream_id <= $2 ORDER BY stream_id", after, upto)

    async def get_for_rooms(self, room_ids: list[str], upto: int) -> list[dict[str, Any]]:
        """The latest receipts in these rooms, as of stream position `upto`."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(room_ids), 500):
            chunk = room_ids[i:i + 500]
            placeholders = ",".join(f"${n + 2}" for n in range(len(chunk)))
            out.extend(await self.db.fetch(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts"
                f" WHERE stream_id <= $1 AND room_id IN ({placeholders}) ORDER BY stream_id", upto, *chunk))
        return out

    async def get_user_receipt(self, room_id: str, receipt_type: str, user_id: str,
                               thread_id: str = UNTHREADED) -> dict[str, Any] | None:
        return await self.db.fetchrow(
            "SELECT event_id, event_stream_ordering, ts FROM receipts WHERE room_id = $1"
            " AND receipt_type = $2 AND user_id = $3 AND thread_id = $4",
            room_id, receipt_type, user_id, thread_id)

    async def max_stream_id(self) -> int:
        return int(await self.db.fetchval("SELECT COALESCE(MAX(stream_id), 0) FROM receipts") or 0)
