"""POST /_matrix/client/v1/appservice/{appserviceId}/ping (client-server API, "Appservice ping"): an
application service asks the homeserver to call its /_matrix/app/v1/ping, to check that the homeserver
can reach it. Only with that service's own as_token.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V1, HandlerResult, Route, extract_token, get_hs, get_requester, parse_json
from hs.appservice.queries import appservice_queries
from hs.errors import bad_json, forbidden


async def ping(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    queries = appservice_queries(hs)
    token = extract_token(request)
    service = queries.by_as_token(token) if token is not None else None
    if service is None:
        # A user's token is authenticated (401 if it is none) and then refused: not a service.
        await get_requester(request)
        raise forbidden("Only application services can use the /appservice/ping endpoint")
    service = queries.check_ping_caller(service.as_token, request.match_info["appserviceId"])
    body = await parse_json(request, allow_empty=True)
    txn_id = body.get("transaction_id")
    if txn_id is not None and not isinstance(txn_id, str):
        raise bad_json("'transaction_id' must be a string")
    return 200, {"duration_ms": await queries.ping(service, txn_id)}


ROUTES: list[Route] = [
    Route("POST", "/appservice/{appserviceId}/ping", ping, "main", prefixes=CLIENT_V1),
]
