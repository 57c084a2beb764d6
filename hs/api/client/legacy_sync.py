"""The deprecated v1 sync endpoints still in the spec: GET /events, GET /initialSync and
GET /rooms/{roomId}/initialSync (room previews). The logic is in hs/services/legacy_sync.py."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, Route, get_hs, get_requester, get_requester_and_room
from hs.api.params import query_bool, query_int, query_limit, query_str, query_stream_token
from hs.errors import missing_param
from hs.services.legacy_sync import DEFAULT_LIMIT, MAX_LIMIT, LegacySync

# Synapse's long-poll when the client names none; longer ones are cut short as /sync's are.
DEFAULT_TIMEOUT_MS = 30000
MAX_TIMEOUT_MS = 10 * 60 * 1000


async def get_events(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    room_id = query_str(request, "room_id")
    if requester.is_guest and room_id is None:
        raise missing_param("Guest users must specify room_id param")
    # "END" is the v1 spelling of "from now on" (as Synapse accepts it).
    from_token = None if query_str(request, "from") == "END" else query_stream_token(request, "from")
    timeout = query_int(request, "timeout", DEFAULT_TIMEOUT_MS, maximum=MAX_TIMEOUT_MS, clamp=True)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT, minimum=0)
    return 200, await LegacySync(hs).events(requester, from_token, timeout, limit, room_id)


async def initial_sync(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT, minimum=0)
    archived = query_bool(request, "archived")
    return 200, await LegacySync(hs).initial_sync(requester, limit, archived)


async def room_initial_sync(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT, minimum=0)
    return 200, await LegacySync(hs).room_initial_sync(requester, room_id, limit)


ROUTES: list[Route] = [
    Route("GET", "/events", get_events, "sync", CLIENT_V3_V1),
    Route("GET", "/initialSync", initial_sync, "sync", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/initialSync", room_initial_sync, "sync", CLIENT_V3_V1),
]
