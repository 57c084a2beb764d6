"""GET /pushers and POST /pushers/set (the protocol logic is in hs/services/pushers.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.roles.duties import PUSHER
from hs.services.pushers import client_pusher, parse_pusher_request
from hs.util import now_ms

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/api/v1")


async def get_pushers(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    rows = await hs.pushers_store.get_pushers(requester.user_id)
    return 200, {"pushers": [client_pusher(r) for r in rows]}


async def set_pusher(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    pusher, app_id, pushkey, append = parse_pusher_request(await parse_json(request))
    if pusher is None:
        await hs.pushers_store.delete_pusher(requester.user_id, app_id, pushkey)
        return 200, {}
    # A new pusher starts with the next notification.
    await hs.pushers_store.set_pusher(requester.user_id, requester.device_id, pusher, now_ms(),
                                      hs.events_stream.current_position(), append)
    if PUSHER in hs.duties:
        hs.pushers.poke()
    return 200, {}


ROUTES: list[Route] = [
    Route("GET", "/pushers", get_pushers, "main", prefixes=PREFIXES),
    Route("POST", "/pushers/set", set_pusher, "main", prefixes=PREFIXES),
]
