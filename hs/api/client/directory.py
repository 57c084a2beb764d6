"""Room aliases (/directory/room), a room's local aliases, and the published room directory
(/directory/list/room, /publicRooms; with `server=<other>`, that server's list, asked over federation),
and application services' lists per third-party network (/directory/list/appservice).
The logic lives in `hs/services/room_aliases.py` and `room_directory.py`."""

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
    query_bool,
    query_int,
    query_str,
    query_token,
    require_str,
    token,
)
from hs.errors import bad_request, invalid_param, missing_token
from hs.federation.discovery import DiscoveryError, parse_server_name
from hs.services.room_directory import room_types_filter


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


async def put_appservice_visibility(request: web.Request) -> tuple[int, Any]:
    """An application service's list for one network: `visibility` public (the default, as Synapse)
    lists the room, private takes it out."""
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    visibility = require_str(body, "visibility", optional=True) or "public"
    await hs.room_directory.set_appservice_visibility(requester, request.match_info["networkId"],
                                                      request.match_info["roomId"], visibility)
    return 200, {}


async def delete_appservice_visibility(request: web.Request) -> tuple[int, Any]:
    """Synapse's shorthand for taking a room out of an application service's network list."""
    hs = get_hs(request)
    requester = await get_requester(request)
    await hs.room_directory.set_appservice_visibility(requester, request.match_info["networkId"],
                                                      request.match_info["roomId"], "private")
    return 200, {}


def _remote_server(request: web.Request) -> str | None:
    """The `server` asked about, when it is not this one (400 M_INVALID_PARAM if not a server name)."""
    server = query_str(request, "server")
    if not server or server == get_hs(request).server_name:
        return None
    try:
        parse_server_name(server)
    except DiscoveryError:
        raise invalid_param(f"Invalid server name: {server}") from None
    return server


async def get_public_rooms(request: web.Request) -> tuple[int, Any]:
    """The spec asks no authentication for the local directory; as Synapse, a token is needed only to
    have another server's directory fetched (`allow_public_rooms_without_auth` is about federation)."""
    hs = get_hs(request)
    requester = await get_optional_requester(request)
    remote = _remote_server(request)
    limit = query_int(request, "limit", None, clamp=True)
    since = query_str(request, "since")
    if remote is not None:
        if requester is None:
            raise missing_token("Missing access token")
        return 200, await hs.room_directory.remote_public_rooms(
            remote, limit, since, None, None, query_bool(request, "include_all_networks"),
            query_str(request, "third_party_instance_id"))
    query_token(request, "since", directory_since)
    return 200, await hs.room_directory.public_rooms(limit, since, None, None)


async def post_public_rooms(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    await get_requester(request)
    remote = _remote_server(request)
    body = await parse_json(request, allow_empty=True)
    limit = body_int(body, "limit", minimum=0, clamp=True)
    since = require_str(body, "since", optional=True) or None
    if since is not None and remote is None:
        token(since, "since", directory_since)  # another server's tokens are its own business
    include_all_networks = body_bool(body, "include_all_networks", False)
    third_party_instance_id = require_str(body, "third_party_instance_id", optional=True)
    if include_all_networks and third_party_instance_id is not None:
        raise bad_request("Can't use include_all_networks with an explicit network")  # (as Synapse)
    filt = body_object(body, "filter") or {}
    term = require_str(filt, "generic_search_term", optional=True)
    room_types = room_types_filter(filt)
    if remote is not None:
        return 200, await hs.room_directory.remote_public_rooms(
            remote, limit, since, term, room_types, include_all_networks, third_party_instance_id)
    return 200, await hs.room_directory.public_rooms(limit, since, term, room_types,
                                                     include_all_networks=include_all_networks,
                                                     third_party_instance_id=third_party_instance_id)


ROUTES: list[Route] = [
    Route("PUT", "/directory/room/{roomAlias}", put_alias, "main", CLIENT_V3_V1),
    Route("GET", "/directory/room/{roomAlias}", get_alias, "main", CLIENT_V3_V1),
    Route("DELETE", "/directory/room/{roomAlias}", delete_alias, "main", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/aliases", get_room_aliases, "main", CLIENT_V3),
    Route("GET", "/directory/list/room/{roomId}", get_visibility, "main", CLIENT_V3_V1),
    Route("PUT", "/directory/list/room/{roomId}", put_visibility, "main", CLIENT_V3_V1),
    Route("PUT", "/directory/list/appservice/{networkId}/{roomId}", put_appservice_visibility, "main",
          CLIENT_V3_V1),
    Route("DELETE", "/directory/list/appservice/{networkId}/{roomId}", delete_appservice_visibility, "main",
          CLIENT_V3_V1),
    Route("GET", "/publicRooms", get_public_rooms, "client", CLIENT_V3_V1),
    Route("POST", "/publicRooms", post_public_rooms, "client", CLIENT_V3_V1),
]
