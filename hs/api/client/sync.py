"""GET /sync, and the filter endpoints (POST /user/{userId}/filter, GET /user/{userId}/filter/{filterId})."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_own_requester, get_requester, parse_json
from hs.api.params import (
    INT64_MAX,
    MAX_JSON_QUERY_LENGTH,
    parse_int,
    query_bool,
    query_enum,
    query_int,
    query_str,
    query_stream_token,
)
from hs.errors import not_found
from hs.services.filtering import Filter
from hs.services.sync import SyncConfig

PRESENCE_STATES = ("online", "offline", "unavailable")
# Longer long-polls than this are cut short (clients ask again).
MAX_TIMEOUT_MS = 10 * 60 * 1000


async def sync(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    timeout = query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS, clamp=True)
    full_state = query_bool(request, "full_state")
    query_bool(request, "use_state_after")  # checked; the state section is always the spec's `state`
    set_presence = query_enum(request, "set_presence", PRESENCE_STATES, "online")
    assert set_presence is not None
    since = query_stream_token(request, "since")
    raw_filter = query_str(request, "filter", max_length=MAX_JSON_QUERY_LENGTH)
    if raw_filter is not None and not raw_filter.startswith("{"):
        parse_int(raw_filter, "filter")  # a filter ID: an ASCII integer that fits the column
    sync_filter = await hs.sync.resolve_filter(requester.user_id, raw_filter)
    config = SyncConfig(user_id=requester.user_id, device_id=requester.device_id, filter=sync_filter,
                        since=since, full_state=full_state, timeout_ms=timeout, set_presence=set_presence)
    return 200, await hs.sync.sync(config)


async def create_filter(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_own_requester(request, "Cannot create filters for other users")
    body = await parse_json(request)
    Filter.parse(body)
    filter_id = await hs.user_store.add_filter(requester.user_id, body)
    return 200, {"filter_id": str(filter_id)}


async def get_filter(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_own_requester(request, "Cannot get filters for other users")
    try:  # a malformed ID names no filter: the spec's answer is 404
        filter_id = parse_int(request.match_info["filterId"], "filterId", maximum=INT64_MAX, error=ValueError)
    except ValueError:
        raise not_found("No such filter") from None
    stored = await hs.user_store.get_filter(requester.user_id, filter_id)
    if stored is None:
        raise not_found("No such filter")
    return 200, stored


ROUTES: list[Route] = [
    Route("GET", "/sync", sync, "sync"),
    Route("POST", "/user/{userId}/filter", create_filter, "client"),
    Route("GET", "/user/{userId}/filter/{filterId}", get_filter, "client"),
]
