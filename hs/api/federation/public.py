"""Federation endpoints about what a server shows of its rooms to others: the published room directory
(`/publicRooms`, when `allow_public_rooms_over_federation` is on), space hierarchies, the event
nearest a time, and the OpenID userinfo check (unauthenticated, as the spec has it: a third-party
service, not a server, calls it). The logic is in hs/services/room_directory.py, spaces.py, openid.py
and hs/federation/timestamps.py."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.api.params import (
    body_bool,
    body_int,
    body_object,
    path_room_id,
    query_bool,
    query_enum,
    query_int,
    query_required_int,
    query_str,
    require_str,
)
from hs.errors import forbidden, missing_param
from hs.federation.request_auth import authenticate_origin
from hs.federation.timestamps import event_near_timestamp_for_server
from hs.services.openid import OpenIdTokens
from hs.services.room_directory import room_types_filter

V1 = ("/_matrix/federation/v1",)
DEFAULT_POST_LIMIT = 100  # Synapse's, when a filtered request names none


async def _directory_origin(request: web.Request) -> str:
    origin = await authenticate_origin(request)
    if not get_hs(request).config.allow_public_rooms_over_federation:
        raise forbidden(f"Federation denied with {origin}.")
    return origin


async def public_rooms_get(request: web.Request) -> HandlerResult:
    await _directory_origin(request)
    limit = query_int(request, "limit", 0, clamp=True)  # 0: no limit
    return 200, await get_hs(request).room_directory.public_rooms_for_server(
        limit or None, query_str(request, "since"), None, None,
        query_bool(request, "include_all_networks"), query_str(request, "third_party_instance_id"))


async def public_rooms_post(request: web.Request) -> HandlerResult:
    await _directory_origin(request)
    body = await parse_json(request, allow_empty=True)
    limit = body_int(body, "limit", DEFAULT_POST_LIMIT, clamp=True)
    filt = body_object(body, "filter") or {}
    room_types = room_types_filter(filt)
    return 200, await get_hs(request).room_directory.public_rooms_for_server(
        limit or None, require_str(body, "since", optional=True) or None,
        require_str(filt, "generic_search_term", optional=True), room_types,
        body_bool(body, "include_all_networks", False), require_str(body, "third_party_instance_id", optional=True))


async def hierarchy(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    return 200, await get_hs(request).spaces.for_server(origin, path_room_id(request),
                                                          query_bool(request, "suggested_only"))


async def timestamp_to_event(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    room_id = path_room_id(request)
    ts = query_required_int(request, "ts", minimum=0)
    direction = query_enum(request, "dir", ("f", "b"))
    if direction is None:
        raise missing_param("Missing 'dir'")
    return 200, await event_near_timestamp_for_server(get_hs(request), origin, room_id, ts, direction == "f")


async def openid_userinfo(request: web.Request) -> HandlerResult:
    return 200, await OpenIdTokens(get_hs(request)).userinfo(query_str(request, "access_token"))


def _v1(method: str, path: str, handler: object) -> Route:
    return Route(method, path, handler, "federation", prefixes=V1, resource="federation")  # type: ignore[arg-type]


ROUTES: list[Route] = [
    _v1("GET", "/publicRooms", public_rooms_get),
    _v1("POST", "/publicRooms", public_rooms_post),
    _v1("GET", "/hierarchy/{roomId}", hierarchy),
    _v1("GET", "/timestamp_to_event/{roomId}", timestamp_to_event),
    _v1("GET", "/openid/userinfo", openid_userinfo),
]
