"""Third-party network lookups (GET /thirdparty/...): offered by application services (bridges) that
declare `protocols` in their registration, forwarded to them (hs/appservice/queries.py).

Without such services there are no protocols (GET /thirdparty/protocols answers `{}`), a named protocol
is unknown, and lookups find nothing: what Synapse answers without appservices.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, get_requester
from hs.api.client import appservice_ping
from hs.appservice.queries import appservice_queries
from hs.errors import invalid_param

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")
MAX_FIELDS = 20
MAX_FIELD_LENGTH = 1000


def lookup_fields(request: web.Request) -> list[tuple[str, str]]:
    """The query's fields, passed on to the services as they are (the protocol defines them), less
    the access token; bounded in number and length.

    (Read from the raw query string: hs/api/params.py has no reader of arbitrary parameters yet.)"""
    fields = [(k, v) for k, v in parse_qsl(request.query_string, keep_blank_values=True) if k != "access_token"]
    if len(fields) > MAX_FIELDS:
        raise invalid_param(f"At most {MAX_FIELDS} fields are accepted")
    if any(len(k) > MAX_FIELD_LENGTH or len(v) > MAX_FIELD_LENGTH for k, v in fields):
        raise invalid_param(f"A field is longer than {MAX_FIELD_LENGTH} characters")
    return fields


async def protocols(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, await appservice_queries(get_hs(request)).protocols()


async def protocol(request: web.Request) -> HandlerResult:
    await get_requester(request)
    return 200, await appservice_queries(get_hs(request)).protocol(request.match_info["protocol"])


def _lookup(kind: str) -> Handler:
    async def handler(request: web.Request) -> HandlerResult:
        await get_requester(request)
        fields = lookup_fields(request)
        found = await appservice_queries(get_hs(request)).lookup(kind, request.match_info.get("protocol"), fields)
        return 200, found

    return handler


ROUTES: list[Route] = [
    # The appservice ping is mounted with these until hs/roles/routes.py lists its module.
    *appservice_ping.ROUTES,
    Route("GET", "/thirdparty/protocols", protocols, "main", prefixes=PREFIXES),
    Route("GET", "/thirdparty/protocol/{protocol}", protocol, "main", prefixes=PREFIXES),
    *(Route("GET", f"/thirdparty/{kind}{suffix}", _lookup(kind), "main", prefixes=PREFIXES)
      for kind in ("location", "user") for suffix in ("", "/{protocol}")),
]
