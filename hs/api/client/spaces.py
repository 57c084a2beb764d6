"""GET /_matrix/client/v1/rooms/{roomId}/hierarchy and /room_summary/{roomIdOrAlias} (the logic is in
hs/services/spaces.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, get_hs, query_int
from hs.errors import invalid_param
from hs.services.rooms import check_room_id
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
    requester = await hs.auth.requester(request)
    room_id = request.match_info["roomId"]
    check_room_id(room_id)
    suggested = request.query.get("suggested_only", "false")
    if suggested not in ("true", "false"):
        raise invalid_param("'suggested_only' must be 'true' or 'false'")
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT
    max_depth = query_int(request, "max_depth", DEFAULT_MAX_DEPTH, minimum=0)
    assert max_depth is not None
    req = HierarchyRequest(room_id, suggested == "true", min(max_depth, MAX_MAX_DEPTH), min(limit, MAX_LIMIT))
    token = request.query.get("from")
    if token:
        req = HierarchyRequest(req.room_id, req.suggested_only, req.max_depth, req.limit, decode_token(token, req))
    return 200, await hs.spaces.get(requester.user_id, req)


async def room_summary(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.get_requester(request, optional=True)
    return 200, await hs.room_summaries.summary(requester.user_id if requester is not None else None,
                                                request.match_info["roomIdOrAlias"])


ROUTES: list[Route] = [
    Route("GET", "/room_summary/{roomIdOrAlias}", room_summary, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/hierarchy", hierarchy, "client", prefixes=CLIENT_V1),
]
