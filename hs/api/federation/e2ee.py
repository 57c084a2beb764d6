"""Federation endpoints for end-to-end encryption: a local user's devices (`/user/devices`), and the
server-server side of /keys/query and /keys/claim (`/user/keys/query`, `/user/keys/claim`).

Each handler authenticates the origin (X-Matrix), parses, and hands over to the E2EE service.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.federation.request_auth import authenticate_origin

V1 = ("/_matrix/federation/v1",)


async def user_devices(request: web.Request) -> HandlerResult:
    await authenticate_origin(request)
    return 200, await get_hs(request).e2ee.federation_user_devices(request.match_info["userId"])


async def query_keys(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    body = await parse_json(request)
    return 200, await get_hs(request).e2ee.federation_query_keys(origin, body)


async def claim_keys(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    body = await parse_json(request)
    return 200, await get_hs(request).e2ee.federation_claim_keys(origin, body)


def _v1(method: str, path: str, handler: object) -> Route:
    return Route(method, path, handler, "federation", prefixes=V1, resource="federation")  # type: ignore[arg-type]


ROUTES: list[Route] = [
    _v1("GET", "/user/devices/{userId}", user_devices),
    _v1("POST", "/user/keys/query", query_keys),
    _v1("POST", "/user/keys/claim", claim_keys),
]
