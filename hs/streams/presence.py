"""The presence stream: users' presence, one writer (`stream_writers.presence`).

Every change a client should see gives the user's row a new position; /sync returns the rows in its
range of users who share a room with the syncer. A change wakes only the user and the long-polls of
the rooms the user is joined to (whose members are exactly the users who share a room with them).

Other processes send what they learn about a user's activity (a /sync, a PUT of the status) to the
writer over the `presence_commands` replication channel; the writer owns the in-memory state and the
timeouts (hs/services/presence.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hs.db.stores.presence import PresenceState, PresenceStore
from hs.streams.base import StreamContext, TableStream

COMMANDS_CHANNEL = "presence_commands"


class PresenceStream(TableStream):
    NAME = "presence"
    WRITE_GROUPS = ("presence",)
    SOURCE = "presence_stream"
    TABLE = "presence"

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.store = PresenceStore(ctx.db)
        # On the writer: what handles the activity other processes report (the presence service).
        self.on_command: Callable[[dict[str, Any]], None] | None = None

    async def stored_max(self) -> int:
        return int(await self.store.max_stream_id())

    def subscribe(self) -> None:
        """Register the replication handlers; must run before the transport starts."""
        self.ctx.replication.subscribe(self.NAME, self.handle_message)
        if self.is_writer:
            self.ctx.replication.subscribe(COMMANDS_CHANNEL, self._on_command)

    async def persist(self, state: PresenceState, rooms: list[str]) -> PresenceState:
        """Store the state at a new position and wake the user and the members of `rooms`."""
        assert self.tracker is not None, "only the presence writer persists presence"
        async with self.tracker.allocate() as pos:
            state = replace(state, stream_id=pos)
            await self.store.upsert(state)
        await self.publish(self.tracker.persisted_upto, row_position=pos, users=[state.user_id], rooms=rooms)
        return state

    async def send_command(self, command: dict[str, Any]) -> None:
        """From a process that is not the writer: tell the writer about a user's activity."""
        await self.ctx.replication.publish(COMMANDS_CHANNEL, self.ctx.instance_name, 0, command)

    def _on_command(self, msg: dict[str, Any]) -> None:
        if self.on_command is not None:
            self.on_command(msg)
