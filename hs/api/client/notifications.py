"""GET /notifications (the logic is in hs/services/notifications.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, query_int
from hs.errors import invalid_param
from hs.services.notifications import DEFAULT_LIMIT


async def get_notifications(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    raw_from = request.query.get("from")
    before = None
    if raw_from:
        if not (raw_from.isascii() and raw_from.isdigit()) or len(raw_from) > 18:
            raise invalid_param("Invalid 'from' token")
        before = int(raw_from)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT
    only = request.query.get("only")
    if only not in (None, "", "highlight"):
        raise invalid_param("'only' must be 'highlight'")
    return 200, await hs.notifications.get(requester.user_id, before, limit, only == "highlight")


ROUTES: list[Route] = [
    Route("GET", "/notifications", get_notifications, "main", prefixes=(
        "/_matrix/client/v3", "/_matrix/client/r0")),
]
