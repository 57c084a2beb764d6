"""POST /user_directory/search."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json, require_str
from hs.errors import bad_json
from hs.services.user_directory import DEFAULT_LIMIT, MAX_TERM_LENGTH


async def search(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    body = await parse_json(request)
    term = require_str(body, "search_term")
    assert term is not None
    if len(term) > MAX_TERM_LENGTH:
        raise bad_json(f"'search_term' is longer than {MAX_TERM_LENGTH} characters")
    limit = body.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise bad_json("'limit' must be a non-negative integer")
    return 200, await hs.user_directory.search(requester.user_id, term, limit)


ROUTES: list[Route] = [
    Route("POST", "/user_directory/search", search, "user_directory", prefixes=(
        "/_matrix/client/v3", "/_matrix/client/r0")),
]
