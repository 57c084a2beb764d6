"""The receipts stream: m.read and m.read.private receipts, one writer (`stream_writers.receipts`).

Every stored receipt gets a new stream position. A public receipt wakes the room's members; a
private one wakes only its owner, the only user who ever sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.db.stores.receipts import ReceiptStore
from hs.errors import MatrixError
from hs.streams.base import Stream
from hs.streams.positions import PositionTracker, make_position_source

if TYPE_CHECKING:
    from hs.server import HomeServer

PRIVATE = "m.read.private"


class ReceiptsStream(Stream):
    NAME = "receipts"

    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs, hs.config.stream_writers.receipts)
        self.store = ReceiptStore(hs.db)
        self.tracker: PositionTracker | None = None

    async def setup(self) -> None:
        source = await make_position_source(self.hs.db, "receipts", "receipts", "stream_id")
        maximum = await self.store.max_stream_id()
        # One writer: everything in the table is persisted.
        self.set_initial_positions(dict.fromkeys(self.writers, maximum))
        if self.is_writer:
            self.tracker = PositionTracker(source, maximum)

    async def catch_up(self) -> None:
        maximum = await self.store.max_stream_id()
        for writer in self.writers:
            self.on_position(writer, maximum, everyone=True)

    async def write(self, room_id: str, receipt_type: str, user_id: str, thread_id: str, event_id: str,
                    event_stream_ordering: int, ts: int) -> bool:
        """Store a receipt and tell every process; False when an existing one is already as far."""
        tracker = self.tracker
        if tracker is None:
            raise MatrixError(502, "M_UNKNOWN", f"receipts are written by {self.writers[0]}; HTTP "
                                                "replication to other writers is not available in this build")
        async with tracker.allocate() as pos:
            stored = await self.store.upsert(room_id, receipt_type, user_id, thread_id, event_id,
                                             event_stream_ordering, ts, pos)
        if not stored:
            # The position stays unused (and unpublished until a later write covers it).
            return False
        if receipt_type == PRIVATE:
            await self.publish(tracker.persisted_upto, row_position=pos, users=[user_id])
        else:
            await self.publish(tracker.persisted_upto, row_position=pos, rooms=[room_id], users=[user_id])
        return True
