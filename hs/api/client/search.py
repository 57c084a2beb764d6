"""POST /search (the logic is in hs/services/search.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import offset_token, query_token


async def search(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    offset = query_token(request, "next_batch", offset_token) or 0
    return 200, await hs.search.search(requester, body, offset)


ROUTES: list[Route] = [
    Route("POST", "/search", search, "client", prefixes=("/_matrix/client/v3", "/_matrix/client/r0")),
]
