"""PUT /rooms/{roomId}/typing/{userId}: typing notifications (served by the typing stream's writer)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import (
    CLIENT_V3_V1,
    HandlerResult,
    Route,
    get_hs,
    get_own_requester,
    parse_json,
)
from hs.api.params import body_bool, body_int
from hs.errors import forbidden, invalid_param, missing_param
from hs.streams.typing import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS


async def put_typing(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_own_requester(request, "Cannot set another user's typing state")
    room_id, user_id = request.match_info["roomId"], requester.user_id
    if not room_id.startswith("!"):
        raise invalid_param(f"{room_id} is not a valid room ID")
    body = await parse_json(request)
    if "typing" not in body:
        raise missing_param("Missing 'typing'")
    typing = body_bool(body, "typing", False)
    # Longer timeouts are cut to the stream's maximum, as Synapse clamps them.
    timeout = body_int(body, "timeout", DEFAULT_TIMEOUT_MS, maximum=MAX_TIMEOUT_MS, clamp=True,
                       range_error=invalid_param) if typing else 0
    assert timeout is not None
    membership = await hs.event_store.get_membership(room_id, user_id)
    if membership is None or membership[0] != "join":
        raise forbidden("You are not in this room")
    await hs.typing.set_typing(room_id, user_id, typing, timeout)
    return 200, {}


ROUTES: list[Route] = [
    Route("PUT", "/rooms/{roomId}/typing/{userId}", put_typing, "typing", prefixes=CLIENT_V3_V1),
]
