"""The to-device stream: messages for one device, one writer (`stream_writers.to_device`).

Every stored message gets its own position, so /sync can return a capped batch and a token exactly
after its last message. Messages are deleted once their device syncs with a token at or after them;
the writer's position is also kept in `stream_positions`, since the table may be emptied that way.
A write wakes only the recipients' long-polls.
"""

from __future__ import annotations

import logging
from typing import Any

from hs.db.stores.e2ee import E2eeStore
from hs.streams.base import Stream, StreamContext
from hs.streams.positions import LocalCounter, PositionTracker, PostgresSequence, make_position_source

logger = logging.getLogger(__name__)


class ToDeviceStream(Stream):
    NAME = "to_device"
    WRITE_GROUPS = ("to_device",)

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store = E2eeStore(ctx.db)
        self.tracker: PositionTracker | None = None

    async def setup(self) -> None:
        source = await make_position_source(self.ctx.db, "to_device", "device_inbox", "stream_id")
        maximum = await self.store.max_to_device_position()
        if isinstance(source, PostgresSequence):
            await source.setup(max(maximum, 1))
        else:
            source = LocalCounter(maximum)
        self.set_initial_positions(dict.fromkeys(self.writers, maximum))
        if self.is_writer:
            self.tracker = PositionTracker(source, maximum)

    async def catch_up(self) -> None:
        maximum = await self.store.max_to_device_position()
        for writer in self.writers:
            self.on_position(writer, maximum, everyone=True)

    async def send(self, sender: str, sender_device: str, event_type: str, txn_id: str,
                   messages: list[tuple[str, str, dict[str, Any]]]) -> bool:
        """Store (user, device, content) messages once per transaction ID; False for a repeated one."""
        if self.tracker is None:
            raise self.not_writer()
        tracker = self.tracker
        if not messages:
            return await self.store.add_to_device_messages(sender, sender_device, event_type, txn_id, [],
                                                           self.ctx.instance_name)
        async with tracker.allocate_many(len(messages)) as positions:
            rows = [(pos, user, device, content) for pos, (user, device, content) in zip(positions, messages,
                                                                                         strict=True)]
            fresh = await self.store.add_to_device_messages(sender, sender_device, event_type, txn_id, rows,
                                                            self.ctx.instance_name)
        users = sorted({user for user, _device, _content in messages}) if fresh else []
        await self.publish(tracker.persisted_upto, row_position=positions[-1], users=users)
        return fresh

