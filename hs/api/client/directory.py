"""Room aliases (/directory/room), a room's local aliases, and the published room directory
(/directory/list/room, /publicRooms). The logic lives in `hs/services/room_aliases.py` and `room_directory.py`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import (
    CLIENT_V3,
    CLIENT_V3_V1,
    Route,
    get_hs,
    get_optional_requester,
    get_requester,
    get_requester_and_room,
    parse_json,
)
from hs.api.params import (
    MAX_OFFSET,
    body_bool,
    body_int,
    body_object,
    parse_int,
    query_int,
    query_str,
    query_token,
    require_str,
    token,
)
from hs.errors import MatrixError, bad_json, missing_token, unreachable


def directory_since(raw: str) -> int:
    """A /publicRooms `since` token: `n<offset>` (next page) or `p<offset>` (previous page)."""
    if raw[:1] not in ("n", "p"):
        raise ValueError(raw)
    return parse_int(raw[1:], "since", maximum=MAX_OFFSET, error=ValueError)


async def put_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    room_id = require_str(body, "room_id")
    assert room_id is not None
    await hs.room_aliases.create_alias(requester, request.match_info["roomAlias"], room_id)
    return 200, {}


async def get_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    return 200, await hs.room_aliases.get_alias(request.match_info["roomAlias"])


async def delete_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    await hs.room_aliases.delete_alias(requester, request.match_info["roomAlias"])
    return 200, {}


async def get_room_aliases(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    return 200, {"aliases": await hs.room_aliases.get_room_aliases(requester, room_id)}


async def get_visibility(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    return 200, {"visibility": await hs.room_directory.get_visibility(request.match_info["roomId"])}


async def put_visibility(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    visibility = require_str(body, "visibility", optional=True) or "public"
    await hs.room_directory.set_visibility(requester, request.match_info["roomId"], visibility)
    return 200, {}


def _remote_server(request: web.Request) -> str | None:
    """The `server` asked about, when it is not this one."""
    server = query_str(request, "server")
    return server if server and server != get_hs(request).server_name else None


def _no_remote_directories() -> MatrixError:
    return unreachable("Fetching other servers' room directories is not supported")


async def get_public_rooms(request: web.Request) -> tuple[int, Any]:
    """The spec asks no authentication for the local directory; as Synapse, a token is needed only to
    have another server's directory fetched (`allow_public_rooms_without_auth` is about federation)."""
    hs = get_hs(request)
    requester = await get_optional_requester(request)
    remote = _remote_server(request)
    if remote is not None:
        if requester is None:
            raise missing_token("Missing access token")
        raise _no_remote_directories()
    limit = query_int(request, "limit", None, clamp=True)
    since = query_str(request, "since")
    query_token(request, "since", directory_since)
    return 200, await hs.room_directory.public_rooms(limit, since, None, None)


async def post_public_rooms(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    await get_requester(request)
    if _remote_server(request) is not None:
        raise _no_remote_directories()
    body = await parse_json(request, allow_empty=True)
    limit = body_int(body, "limit", minimum=0, clamp=True)
    since = require_str(body, "since", optional=True) or None
    if since is not None:
        token(since, "since", directory_since)
    body_bool(body, "include_all_networks", False)
    filt = body_object(body, "filter") or {}
    term = require_str(filt, "generic_search_term", optional=True)
    room_types = filt.get("room_types")
    if room_types is not None and (not isinstance(room_types, list)
                                   or not all(t is None or isinstance(t, str) for t in room_types)):
        raise bad_json("'room_types' must be a list of strings or nulls")
    return 200, await hs.room_directory.public_rooms(limit, since, term, room_types)


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
