"""Calls to another instance's `replication` resource, for writes owned by another stream writer.

The monolith owns every stream, so it never calls this; worker clusters use it to forward, for
example, a /send for a room sharded to another event persister.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hs.errors import MatrixError

if TYPE_CHECKING:
    from hs.server import HomeServer


class ReplicationClient:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def send_event(self, room_id: str, sender: str, etype: str, content: dict[str, Any],
                         state_key: str | None, txn: tuple[str, str, str] | None, redacts: str | None) -> Any:
        writer = self.hs.events_stream.writer_for_room(room_id)
        raise MatrixError(502, "M_UNKNOWN", f"room {room_id} is written by {writer}; HTTP replication to "
                                            "other writers is not available in this build")
