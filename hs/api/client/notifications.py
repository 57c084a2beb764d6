"""GET /notifications (the logic is in hs/services/notifications.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester
from hs.api.params import parse_int, query_enum, query_limit, query_token
from hs.services.notifications import DEFAULT_LIMIT, MAX_LIMIT


def notifications_token(raw: str) -> int:
    """A `from` token: the position the previous page stopped above."""
    return parse_int(raw, "from", error=ValueError)


async def get_notifications(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    before = query_token(request, "from", notifications_token)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT)
    only = query_enum(request, "only", ("", "highlight"))
    return 200, await hs.notifications.get(requester.user_id, before, limit, only == "highlight")


ROUTES: list[Route] = [
    Route("GET", "/notifications", get_notifications, "main", prefixes=(
        "/_matrix/client/v3", "/_matrix/client/r0")),
]
