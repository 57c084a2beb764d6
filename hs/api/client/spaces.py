"""GET /_matrix/client/v1/rooms/{roomId}/hierarchy and /room_summary/{roomIdOrAlias} (the logic is in
hs/services/spaces.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import (
    CLIENT_V1,
    HandlerResult,
    Route,
    get_hs,
    get_optional_requester,
    get_requester_and_room,
)
from hs.api.params import query_bool, query_int, query_limit, query_token
from hs.errors import invalid_param
from hs.services.spaces import (
    DEFAULT_LIMIT,
    DEFAULT_MAX_DEPTH,
    MAX_LIMIT,
    MAX_MAX_DEPTH,
    HierarchyRequest,
    decode_token,
)


async def hierarchy(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    suggested = query_bool(request, "suggested_only")
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    max_depth = query_int(request, "max_depth", DEFAULT_MAX_DEPTH, maximum=MAX_MAX_DEPTH, clamp=True)
    req = HierarchyRequest(room_id, suggested, max_depth, limit)
    token = query_token(request, "from", decode_token)
    if token is not None:
        if (token.suggested_only, token.max_depth) != (req.suggested_only, req.max_depth):
            raise invalid_param("suggested_only and max_depth cannot change on paginated requests")
        req = HierarchyRequest(req.room_id, req.suggested_only, req.max_depth, req.limit, token.offset)
    return 200, await hs.spaces.get(requester.user_id, req)


async def room_summary(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_optional_requester(request)
    return 200, await hs.room_summaries.summary(requester.user_id if requester is not None else None,
                                                request.match_info["roomIdOrAlias"])


ROUTES: list[Route] = [
    Route("GET", "/room_summary/{roomIdOrAlias}", room_summary, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/hierarchy", hierarchy, "client", prefixes=CLIENT_V1),
]
