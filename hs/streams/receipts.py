"""The receipts stream: m.read and m.read.private receipts, one writer (`stream_writers.receipts`).

Every stored receipt gets a new stream position. A public receipt wakes the room's members; a
private one wakes only its owner, the only user who ever sees it.
"""

from __future__ import annotations

from typing import Any

from hs.db.stores.receipts import READ_TYPES, ReceiptStore
from hs.streams.base import StreamContext, TableStream

PRIVATE = "m.read.private"


class ReceiptsStream(TableStream):
    NAME = "receipts"
    WRITE_GROUPS = ("receipts",)
    SOURCE = "receipts"
    TABLE = "receipts"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store = ReceiptStore(ctx.db)

    def handle_message(self, msg: dict[str, Any]) -> None:
        room_id, users = msg.get("counts_room"), msg.get("users") or ()
        if isinstance(room_id, str):  # a read receipt recounted these users' unread notifications
            for user_id in users:
                self.ctx.push_store.unread.invalidate(user_id, room_id)
        super().handle_message(msg)

    async def stored_max(self) -> int:
        return int(await self.store.max_stream_id())

    async def write(self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str,
                    event_stream_ordering: int, ts: int) -> bool:
        """Store a receipt and tell every process; False when an existing one is already as far."""
        tracker = self.tracker
        if tracker is None:
            raise self.not_writer()
        push_store = self.ctx.push_store
        if receipt_type in READ_TYPES:  # the recount must see the room's notifications
            await push_store.pending.settled(room_id)
        async with push_store.count_locks.lock(room_id), tracker.allocate() as pos:
            stored = await self.store.upsert(room_id, receipt_type, user_id, thread_id, event_id,
                                             event_stream_ordering, ts, pos)
        if not stored:
            # The position stays unused (and unpublished until a later write covers it).
            return False
        # A read receipt recounted the user's unread notifications in the room: caches drop them.
        counts = {"counts_room": room_id} if receipt_type in READ_TYPES else {}
        if receipt_type == PRIVATE:
            await self.publish(tracker.persisted_upto, row_position=pos, users=[user_id], **counts)
        else:
            await self.publish(tracker.persisted_upto, row_position=pos, rooms=[room_id], users=[user_id], **counts)
        return True
