"""PUT/GET /presence/{userId}/status."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import (
    CLIENT_V3_V1,
    HandlerResult,
    Route,
    get_hs,
    get_own_requester,
    get_requester,
    parse_json,
)
from hs.api.params import body_enum
from hs.db.stores.presence import PRESENCE_STATES
from hs.errors import bad_json, invalid_param

GROUP = "presence"


async def get_status(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, await hs.presence.get_status(requester.user_id, request.match_info["userId"])


async def put_status(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_own_requester(request, "Can only set your own presence state")
    body = await parse_json(request)
    presence = body_enum(body, "presence", PRESENCE_STATES, required=True, error=invalid_param)
    assert presence is not None
    status_msg = body.get("status_msg")
    if status_msg is not None and not isinstance(status_msg, str):
        raise invalid_param("'status_msg' must be a string")
    unknown = set(body) - {"presence", "status_msg"}
    if unknown:
        # As Synapse: anything else in the body is refused rather than silently dropped.
        raise bad_json(f"Unknown key(s): {', '.join(sorted(unknown))}")
    await hs.presence.set_status(requester.user_id, presence, status_msg or None)
    return 200, {}


ROUTES: list[Route] = [
    Route("GET", "/presence/{userId}/status", get_status, GROUP, prefixes=CLIENT_V3_V1),
    Route("PUT", "/presence/{userId}/status", put_status, GROUP, prefixes=CLIENT_V3_V1),
]
