"""Room aliases (/directory/room), a room's local aliases, and the published room directory
(/directory/list/room, /publicRooms). The logic lives in `hs.services.rooms.RoomService`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import CLIENT_V3, CLIENT_V3_V1, Route, get_hs, parse_json, query_int, require_str
from hs.errors import MatrixError, bad_json
from hs.services.rooms import check_room_id


async def put_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    body = await parse_json(request)
    room_id = require_str(body, "room_id")
    assert room_id is not None
    await hs.rooms.create_alias(requester, request.match_info["roomAlias"], room_id)
    return 200, {}


async def get_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    return 200, await hs.rooms.get_alias(request.match_info["roomAlias"])


async def delete_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    await hs.rooms.delete_alias(requester, request.match_info["roomAlias"])
    return 200, {}


async def get_room_aliases(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    room_id = request.match_info["roomId"]
    check_room_id(room_id)
    return 200, {"aliases": await hs.rooms.get_room_aliases(requester, room_id)}


async def get_visibility(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    return 200, {"visibility": await hs.rooms.get_directory_visibility(request.match_info["roomId"])}


async def put_visibility(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    body = await parse_json(request, allow_empty=True)
    visibility = require_str(body, "visibility", optional=True) or "public"
    await hs.rooms.set_directory_visibility(requester, request.match_info["roomId"], visibility)
    return 200, {}


def _check_server(request: web.Request) -> None:
    server = request.query.get("server")
    if server and server != get_hs(request).server_name:
        raise MatrixError(502, "M_UNKNOWN", "Fetching other servers' room directories is not supported")


async def get_public_rooms(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await hs.auth.get_requester(request, optional=True)
    if requester is None and not hs.config.allow_public_rooms_without_auth:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    _check_server(request)
    limit = query_int(request, "limit", None)
    return 200, await hs.rooms.public_rooms(limit, request.query.get("since") or None, None, None)


async def post_public_rooms(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    await hs.auth.requester(request)
    _check_server(request)
    body = await parse_json(request, allow_empty=True)
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise bad_json("'limit' must be a non-negative integer")
    since = require_str(body, "since", optional=True)
    filt = body.get("filter")
    if filt is not None and not isinstance(filt, dict):
        raise bad_json("'filter' must be an object")
    filt = filt or {}
    term = require_str(filt, "generic_search_term", optional=True)
    room_types = filt.get("room_types")
    if room_types is not None and (not isinstance(room_types, list)
                                   or not all(t is None or isinstance(t, str) for t in room_types)):
        raise bad_json("'room_types' must be a list of strings or nulls")
    return 200, await hs.rooms.public_rooms(limit, since or None, term, room_types)


ROUTES: list[Route] = [
    Route("PUT", "/directory/room/{roomAlias}", put_alias, "main", CLIENT_V3_V1),
    Route("GET", "/directory/room/{roomAlias}", get_alias, "main", CLIENT_V3_V1),
    Route("DELETE", "/directory/room/{roomAlias}", delete_alias, "main", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/aliases", get_room_aliases, "main", CLIENT_V3),
    Route("GET", "/directory/list/room/{roomId}", get_visibility, "main", CLIENT_V3_V1),
    Route("PUT", "/directory/list/room/{roomId}", put_visibility, "main", CLIENT_V3_V1),
    Route("GET", "/publicRooms", get_public_rooms, "client", CLIENT_V3_V1),
    Route("POST", "/publicRooms", post_public_rooms, "client", CLIENT_V3_V1),
]
