"""`GET /_matrix/federation/v1/timestamp_to_event/{roomId}`: the event of a room closest to a time,
for another server that may read the room (a user of it joined, or the room world-readable), from the
events this server holds in the room's timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.errors import not_found
from hs.events.event import JsonDict

if TYPE_CHECKING:
    from hs.server import HomeServer


async def event_near_timestamp_for_server(hs: HomeServer, origin: str, room_id: str, ts: int,
                                          forwards: bool) -> JsonDict:
    """`{event_id, origin_server_ts}` of the event at or after `ts` (forwards) or at or before it;
    403 when `origin` may not read the room, 404 when there is no such event."""
    await hs.federation_room_reads.check_server_may_read(origin, room_id)
    found = await hs.event_store.get_event_near_timestamp(room_id, ts, forwards)
    if found is None:
        raise not_found(f"Unable to find event from {ts} in {'forward' if forwards else 'backward'} direction")
    return {"event_id": found[0], "origin_server_ts": found[1]}
