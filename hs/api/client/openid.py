"""POST /_matrix/client/v3/user/{userId}/openid/request_token (the logic is in hs/services/openid.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V3, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.services.openid import OpenIdTokens


async def request_token(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    await parse_json(request)  # an empty object, reserved for later use
    return 200, await OpenIdTokens(hs).request_token(requester, request.match_info["userId"])


ROUTES: list[Route] = [
    Route("POST", "/user/{userId}/openid/request_token", request_token, "main", CLIENT_V3),
]
