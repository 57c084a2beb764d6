"""Third-party network lookups (GET /thirdparty/...): offered by application services (bridges).

None are registered here, so there are no protocols (GET /thirdparty/protocols answers `{}`), a
named protocol is unknown, and lookups find nothing: what Synapse answers without appservices.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_requester
from hs.errors import not_found

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")


async def protocols(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, {}


async def protocol(request: web.Request) -> HandlerResult:
    await get_requester(request)
    raise not_found(f"Unknown protocol {request.match_info['protocol']!r}")


async def lookup(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, []


ROUTES: list[Route] = [
    Route("GET", "/thirdparty/protocols", protocols, "main", prefixes=PREFIXES),
    Route("GET", "/thirdparty/protocol/{protocol}", protocol, "main", prefixes=PREFIXES),
    *(Route("GET", path, lookup, "main", prefixes=PREFIXES) for path in (
        "/thirdparty/location", "/thirdparty/location/{protocol}", "/thirdparty/user",
        "/thirdparty/user/{protocol}")),
]
