"""GET /_matrix/client/v1/mutual_rooms: the rooms the requester and another user are both joined to."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, get_hs, get_requester
from hs.api.params import offset_token, query_str, query_token
from hs.errors import invalid_param
from hs.events.auth import is_valid_user_id

PAGE = 100


async def mutual_rooms(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    other = query_str(request, "user_id")
    if not other or not is_valid_user_id(other):
        raise invalid_param("'user_id' must be a user ID")
    if other == requester.user_id:
        raise invalid_param("'user_id' is your own user ID")
    start = query_token(request, "from", offset_token) or 0
    mine = await hs.event_store.get_rooms_for_user(requester.user_id, ("join",))
    theirs = await hs.event_store.get_rooms_for_user(other, ("join",))
    shared = sorted(set(mine) & set(theirs))
    body = {"joined": shared[start:start + PAGE], "count": len(shared)}
    if start + PAGE < len(shared):
        body["next_batch"] = str(start + PAGE)
    return 200, body


ROUTES: list[Route] = [
    Route("GET", "/mutual_rooms", mutual_rooms, "client", prefixes=CLIENT_V1),
]
