"""GET /sync, and the filter endpoints (POST /user/{userId}/filter, GET /user/{userId}/filter/{filterId})."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json, query_int
from hs.errors import forbidden, invalid_param, not_found
from hs.services.filtering import Filter
from hs.services.sync import SyncConfig
from hs.streams.tokens import InvalidToken, StreamToken

PRESENCE_STATES = ("online", "offline", "unavailable")
# Longer long-polls than this are cut short (clients ask again).
MAX_TIMEOUT_MS = 10 * 60 * 1000


def _query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return False
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise invalid_param(f"'{name}' must be 'true' or 'false'")


async def sync(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    timeout = min(query_int(request, "timeout", 0) or 0, MAX_TIMEOUT_MS)
    full_state = _query_bool(request, "full_state")
    set_presence = request.query.get("set_presence", "online")
    if set_presence not in PRESENCE_STATES:
        raise invalid_param(f"'set_presence' must be one of {', '.join(PRESENCE_STATES)}")
    since = None
    raw_since = request.query.get("since")
    if raw_since:
        try:
            since = StreamToken.decode(raw_since)
        except InvalidToken:
            raise invalid_param("Invalid 'since' token") from None
    sync_filter = await hs.sync.resolve_filter(requester.user_id, request.query.get("filter"))
    config = SyncConfig(user_id=requester.user_id, device_id=requester.device_id, filter=sync_filter,
                        since=since, full_state=full_state, timeout_ms=timeout, set_presence=set_presence)
    return 200, await hs.sync.sync(config)


async def create_filter(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    if request.match_info["userId"] != requester.user_id:
        raise forbidden("Cannot create filters for other users")
    body = await parse_json(request)
    Filter.parse(body)
    filter_id = await hs.user_store.add_filter(requester.user_id, body)
    return 200, {"filter_id": str(filter_id)}


async def get_filter(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await hs.auth.requester(request)
    if request.match_info["userId"] != requester.user_id:
        raise forbidden("Cannot get filters for other users")
    raw_id = request.match_info["filterId"]
    if not (raw_id.isascii() and raw_id.isdigit()) or len(raw_id) > 18:
        raise not_found("No such filter")
    stored = await hs.user_store.get_filter(requester.user_id, int(raw_id))
    if stored is None:
        raise not_found("No such filter")
    return 200, stored


ROUTES: list[Route] = [
    Route("GET", "/sync", sync, "sync"),
    Route("POST", "/user/{userId}/filter", create_filter, "client"),
    Route("GET", "/user/{userId}/filter/{filterId}", get_filter, "client"),
]
