"""Third-party network lookups (GET /thirdparty/...): offered by application services (bridges) that
declare `protocols` in their registration, forwarded to them (hs/appservice/queries.py).

Without such services there are no protocols (GET /thirdparty/protocols answers `{}`), a named protocol
is unknown, and lookups find nothing: what Synapse answers without appservices.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, get_requester
from hs.api.params import query_fields
from hs.appservice.queries import appservice_queries

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")


async def protocols(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, await appservice_queries(get_hs(request)).protocols()


async def protocol(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, await appservice_queries(get_hs(request)).protocol(request.match_info["protocol"])


def _lookup(kind: str) -> Handler:
    async def handler(request: web.Request) -> HandlerResult:
        await get_requester(request)
        fields = query_fields(request)
        found = await appservice_queries(get_hs(request)).lookup(kind, request.match_info.get("protocol"), fields)
        return 200, found

    return handler


ROUTES: list[Route] = [
    Route("GET", "/thirdparty/protocols", protocols, "main", prefixes=PREFIXES),
    Route("GET", "/thirdparty/protocol/{protocol}", protocol, "main", prefixes=PREFIXES),
    *(Route("GET", f"/thirdparty/{kind}{suffix}", _lookup(kind), "main", prefixes=PREFIXES)
      for kind in ("location", "user") for suffix in ("", "/{protocol}")),
]
