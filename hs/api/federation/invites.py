"""Federation invite endpoints (v1 and v2): another server asks us to co-sign an invite of one of our
users. The handlers authenticate the origin and parse; hs/federation/membership.py checks, signs and
keeps the invite."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.errors import bad_json
from hs.federation.request_auth import authenticate_origin

V1 = ("/_matrix/federation/v1",)
V2 = ("/_matrix/federation/v2",)
# A v1 invite names no room version: v1 is for room versions 1 and 2, which are the same to an invite.
V1_ROOM_VERSION = "1"


async def _invite(request: web.Request, origin: str, pdu: Any, room_version: Any, invite_room_state: Any) -> Any:
    if not isinstance(room_version, str):
        raise bad_json("'room_version' must be a string")
    return await get_hs(request).federation_membership.on_invite(
        origin, request.match_info["roomId"], request.match_info["eventId"], pdu, room_version,
        invite_room_state)


async def invite_v2(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    body = await parse_json(request)
    signed = await _invite(request, origin, body.get("event"), body.get("room_version"), body.get("invite_room_state"))
    return 200, {"event": signed}


async def invite_v1(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    pdu = await parse_json(request)
    unsigned = pdu.get("unsigned")
    state = unsigned.get("invite_room_state") if isinstance(unsigned, dict) else None
    signed = await _invite(request, origin, pdu, V1_ROOM_VERSION, state)
    return 200, [200, {"event": signed}]


ROUTES: list[Route] = [
    Route("PUT", "/invite/{roomId}/{eventId}", invite_v2, "federation", prefixes=V2, resource="federation"),
    Route("PUT", "/invite/{roomId}/{eventId}", invite_v1, "federation", prefixes=V1, resource="federation"),
]
