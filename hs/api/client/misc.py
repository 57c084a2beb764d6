"""Server discovery and feature endpoints: /versions, /capabilities and .well-known/matrix/client."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, JsonDict, Route, get_hs, get_requester
from hs.errors import not_found
from hs.events.room_versions import KNOWN_ROOM_VERSIONS

SUPPORTED_VERSIONS = [
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
]


async def versions(request: web.Request) -> HandlerResult:
    return 200, {"versions": SUPPORTED_VERSIONS, "unstable_features": {"org.matrix.simplified_msc3575": True}}


async def capabilities(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    await get_requester(request)
    available = {
        vid: "stable" if rv.stable else "unstable"
        for vid, rv in sorted(KNOWN_ROOM_VERSIONS.items(), key=lambda kv: int(kv[0]))
    }
    caps: JsonDict = {
        "m.room_versions": {"default": hs.config.default_room_version, "available": available},
        "m.change_password": {"enabled": True},
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": False},
    }
    return 200, {"capabilities": caps}


async def well_known_client(request: web.Request) -> HandlerResult:
    base_url = get_hs(request).config.public_baseurl
    if not base_url:
        raise not_found("No .well-known configured")
    return 200, {"m.homeserver": {"base_url": base_url}}


ROUTES: list[Route] = [
    Route("GET", "/_matrix/client/versions", versions, "client", prefixes=()),
    Route("GET", "/capabilities", capabilities, "main"),
    Route("GET", "/.well-known/matrix/client", well_known_client, "main", prefixes=()),
]
