"""The device-list stream: one row per change of a user's devices (one writer, `stream_writers.device_lists`).

A change is a new login, a device deletion, a device-key upload or a cross-signing key change, of a
local user or (told by their server) of a remote one. /sync and /keys/changes report the changed users
who share a room with the syncer; the write wakes the long-polls of exactly those users (and the
changed user).
"""

from __future__ import annotations

import logging

from hs.db.stores.e2ee import E2eeStore
from hs.streams.base import StreamContext, TableStream

logger = logging.getLogger(__name__)


class DeviceListsStream(TableStream):
    NAME = "device_lists"
    SOURCE = "device_lists"
    TABLE = "device_lists_stream"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store = E2eeStore(ctx.db)

    async def stored_max(self) -> int:
        return int(await self.store.max_device_list_position())

    async def record_change(self, user_id: str, device_id: str | None = None) -> int | None:
        """Log a change of the user's device list and wake everyone who shares a room with them."""
        if self.tracker is None:
            # Not ours to write: the writer records it; we answer once we have seen its position.
            client = self.ctx.replication_client()
            reply = await client.call(self.writers[0], "device_list_change",
                                      {"user_id": user_id, "device_id": device_id})
            await client.wait_for_stream(self.NAME, int(reply["position"]))
            return int(reply["position"])
        tracker = self.tracker
        async with tracker.allocate() as pos:
            await self.store.add_device_list_change(pos, user_id, device_id)
        users = await self.store.get_users_sharing_room(user_id)
        users.add(user_id)
        await self.publish(tracker.persisted_upto, row_position=pos, users=sorted(users))
        return pos

    async def record_remote_change(self, user_id: str, device_id: str | None = None) -> int | None:
        """Log a remote user's device-list or cross-signing change (their server's EDU) for the local
        users who share a room with them; nothing is logged when none does (a server cannot fill the
        log with users nobody here sees)."""
        local_suffix = f":{self.ctx.config.server_name}"
        sharers = await self.store.get_users_sharing_room(user_id)
        if not any(u.endswith(local_suffix) for u in sharers):
            logger.info("device-list change of %s dropped: no local user shares a room", user_id)
            return None
        return await self.record_change(user_id, device_id)
