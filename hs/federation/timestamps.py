"""The event of a room closest to a time, across servers.

Other servers ask `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`: answered, for a server that
may read the room (a user of it joined, or the room world-readable), from the events this server holds
in the room's timeline. A client's `/timestamp_to_event` that finds nothing here, in a room joined over
federation (this server holds none of its history from before the join; a room created here it holds
whole), asks the room's other servers in turn, the creator's first (it has been in the room longest),
15 s in all, as Synapse does; the answer is given to the client as the other server gave it (the event
itself is not fetched here).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

from hs.errors import MatrixError, not_found
from hs.events.auth import get_domain
from hs.events.event import JsonDict

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

logger = logging.getLogger(__name__)

MAX_SERVERS_ASKED = 5
REMOTE_TIMEOUT = 10.0  # seconds for one server's answer
TOTAL_TIMEOUT = 15.0  # seconds for all of them


async def event_near_timestamp_for_server(hs: HomeServer, origin: str, room_id: str, ts: int,
                                          forwards: bool) -> JsonDict:
    """`{event_id, origin_server_ts}` of the event at or after `ts` (forwards) or at or before it;
    403 when `origin` may not read the room, 404 when there is no such event."""
    await hs.federation_room_reads.check_server_may_read(origin, room_id)
    found = await hs.event_store.get_event_near_timestamp(room_id, ts, forwards)
    if found is None:
        raise not_found(f"Unable to find event from {ts} in {'forward' if forwards else 'backward'} direction")
    return {"event_id": found[0], "origin_server_ts": found[1]}


async def event_near_timestamp(hs: HomeServer, requester: Requester, room_id: str, ts: int,
                               forwards: bool) -> JsonDict:
    """The client's /timestamp_to_event: this server's answer, or, when it has none and the user is
    joined, the first answer of another server in the room that lies in the direction asked."""
    try:
        return await hs.room_history.event_near_timestamp(requester, room_id, ts, forwards)
    except MatrixError as e:
        if e.code != 404:
            raise
        missing = e
    room = await hs.room_store.get_room(room_id)
    if room is None or not room.get("remote"):
        raise missing  # created here: this server has all of its history
    membership = await hs.event_store.get_membership(room_id, requester.user_id)
    if membership is None or membership[0] != "join":
        raise missing  # a departed member sees nothing past their departure: not asked elsewhere
    from hs.federation.client import FederationError

    path = f"/_matrix/federation/v1/timestamp_to_event/{quote(room_id, safe='')}"
    deadline = asyncio.get_running_loop().time() + TOTAL_TIMEOUT
    for server in await _servers_to_ask(hs, room_id):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            body = await hs.federation_client.get_json(
                server, path, {"ts": str(ts), "dir": "f" if forwards else "b"}, timeout=min(REMOTE_TIMEOUT, left))
        except FederationError as e:
            logger.info("timestamp_to_event in %s from %s: %s", room_id, server, e)
            continue
        event_id = body.get("event_id") if isinstance(body, dict) else None
        found_ts = body.get("origin_server_ts") if isinstance(body, dict) else None
        if (isinstance(event_id, str) and event_id.startswith("$") and isinstance(found_ts, int)
                and not isinstance(found_ts, bool) and (found_ts >= ts if forwards else found_ts <= ts)):
            return {"event_id": event_id, "origin_server_ts": found_ts}
        logger.info("timestamp_to_event in %s from %s: unusable answer", room_id, server)
    raise missing


async def _servers_to_ask(hs: HomeServer, room_id: str) -> list[str]:
    """The other servers with users joined to the room, the creator's first."""
    hosts = list(dict.fromkeys(get_domain(m) for m in await hs.event_store.get_joined_members(room_id)))
    create = await hs.event_store.get_current_state_event(room_id, "m.room.create")
    if create is not None:
        creator = get_domain(create.sender)
        if creator in hosts:
            hosts.remove(creator)
            hosts.insert(0, creator)
    return [h for h in hosts if h != hs.server_name][:MAX_SERVERS_ASKED]
