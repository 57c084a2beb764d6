"""Small federation endpoints: the server's name and version (unauthenticated, as in the spec) and the
profile and room alias queries other servers make about our users and aliases (X-Matrix signed)."""

from __future__ import annotations

import importlib.metadata

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs
from hs.api.params import query_str
from hs.errors import forbidden, invalid_param, not_found
from hs.events.auth import get_domain
from hs.federation.request_auth import authenticate_origin
from hs.services.profile import FIELDS
from hs.services.room_ids import parse_alias

FEDERATION_V1 = ("/_matrix/federation/v1",)


def _version() -> str:
    try:
        return importlib.metadata.version("hs")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


SERVER_VERSION = _version()


async def version(request: web.Request) -> HandlerResult:
    return 200, {"server": {"name": "hs", "version": SERVER_VERSION}}


async def query_profile(request: web.Request) -> HandlerResult:
    await authenticate_origin(request)
    hs = get_hs(request)
    if not hs.config.allow_profile_lookup_over_federation:
        raise forbidden("Profile lookup over federation is disabled on this homeserver")
    user_id = query_str(request, "user_id", required=True)
    assert user_id is not None
    field = query_str(request, "field")
    if not user_id.startswith("@") or get_domain(user_id) != hs.server_name:
        raise invalid_param("User is not hosted on this homeserver")
    profile = await hs.profiles.get(user_id)  # 404 M_NOT_FOUND for a user we do not have
    fields = FIELDS if field is None else [f for f in FIELDS if f == field]
    return 200, {f: profile[f] for f in fields if profile.get(f) is not None}


async def query_directory(request: web.Request) -> HandlerResult:
    await authenticate_origin(request)
    hs = get_hs(request)
    alias = query_str(request, "room_alias", required=True)
    assert alias is not None
    _localpart, server = parse_alias(alias)
    if server != hs.server_name:
        raise invalid_param("Room alias is not hosted on this homeserver")
    row = await hs.room_store.get_alias(alias)
    if row is None:
        raise not_found("Room alias not found.")
    room_id = str(row["room_id"])
    # The servers with users in the room, ours first: any of them can be asked to join through.
    hosts = {get_domain(user_id) for user_id in await hs.event_store.get_joined_members(room_id)}
    hosts.discard(hs.server_name)
    return 200, {"room_id": room_id, "servers": [hs.server_name, *sorted(hosts)]}


ROUTES: list[Route] = [
    Route("GET", "/version", version, "federation", prefixes=FEDERATION_V1, resource="federation"),
    Route("GET", "/query/profile", query_profile, "federation", prefixes=FEDERATION_V1, resource="federation"),
    Route("GET", "/query/directory", query_directory, "federation", prefixes=FEDERATION_V1, resource="federation"),
]
