"""POST /user_directory/search."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import body_int, require_str
from hs.errors import bad_json
from hs.services.user_directory import DEFAULT_LIMIT, MAX_TERM_LENGTH


async def search(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    term = require_str(body, "search_term")
    assert term is not None
    if len(term) > MAX_TERM_LENGTH:
        raise bad_json(f"'search_term' is longer than {MAX_TERM_LENGTH} characters")
    limit = body_int(body, "limit", DEFAULT_LIMIT, clamp=True)
    assert limit is not None
    return 200, await hs.user_directory.search(requester.user_id, term, limit)


ROUTES: list[Route] = [
    Route("POST", "/user_directory/search", search, "user_directory", prefixes=(
        "/_matrix/client/v3", "/_matrix/client/r0")),
]
