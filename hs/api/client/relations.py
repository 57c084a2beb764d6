"""GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]] and
GET /_matrix/client/v1/rooms/{roomId}/threads (the logic is in hs/services/relations.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, get_hs, get_requester_and_room
from hs.api.params import query_bool, query_enum, query_limit, query_str, relations_token, token
from hs.services.relations import DEFAULT_LIMIT
from hs.services.room_history import MAX_LIMIT


def _token(request: web.Request, name: str) -> str | None:
    """A `from`/`to` token checked here (format and range), as text: the service decodes it."""
    raw = query_str(request, name)
    if raw is not None:
        token(raw, name, relations_token)
    return raw


async def relations(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    direction = query_enum(request, "dir", ("b", "f"), "b")
    query_bool(request, "recurse")  # checked; the answer is depth 1 either way
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    body = await hs.relations.relations(
        requester, room_id, request.match_info["eventId"], request.match_info.get("relType"),
        request.match_info.get("eventType"), _token(request, "from"), _token(request, "to"), limit,
        direction == "f")
    if query_str(request, "recurse") is not None:
        body["recursion_depth"] = 1  # direct children only (asked for or not, recursion is not done)
    return 200, body


async def threads(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    include = query_enum(request, "include", ("all", "participated"), "all")
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    return 200, await hs.relations.threads(requester, room_id, include == "participated",
                                           _token(request, "from"), limit)


ROUTES: list[Route] = [
    Route("GET", "/rooms/{roomId}/relations/{eventId}", relations, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/relations/{eventId}/{relType}", relations, "client", prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", relations, "client",
          prefixes=CLIENT_V1),
    Route("GET", "/rooms/{roomId}/threads", threads, "client", prefixes=CLIENT_V1),
]
