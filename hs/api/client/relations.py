"""GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] and
GET /_matrix/client/v1/rooms/{roomId}/threads (the logic is in hs/services/relations.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, get_hs, query_int
from hs.errors import invalid_param
from hs.services.relations import DEFAULT_LIMIT
from hs.services.rooms import check_room_id


async def relations(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    room_id = request.match_info["roomId"]
    check_room_id(room_id)
    direction = request.query.get("dir", "b")
    if direction not in ("b", "f"):
        raise invalid_param("'dir' must be 'b' or 'f'")
    recurse = request.query.get("recurse")
    if recurse not in (None, "true", "false"):
        raise invalid_param("'recurse' must be 'true' or 'false'")
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT
    body = await hs.relations.relations(
        requester, room_id, request.match_info["eventId"], request.match_info.get("relType"),
        request.match_info.get("eventType"), request.query.get("from"), request.query.get("to"), limit,
        direction == "f")
    if recurse is not None:
        body["recursion_depth"] = 1  # direct children only
    return 200, body


async def threads(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    room_id = request.match_info["roomId"]
    check_room_id(room_id)
    include = request.query.get("include", "all")
    if include not in ("all", "participated"):
        raise invalid_param("'include' must be 'all' or 'participated'")
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT
    return 200, await hs.relations.threads(requester, room_id, include == "participated",
                                           request.query.get("from"), limit)


ROUTES: list[Route] = [
    Route("GET", "/rooms/{roomId}/relations/{eventId}", relations, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/relations/{eventId}/{relType}", relations, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", relations, "client",
          prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/threads", threads, "client", prefixes=CLIENT_V1),
]
