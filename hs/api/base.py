"""What every handler needs: the HomeServer, JSON body parsing with spec errors, and the requester.

Parameters (integers, booleans, enums, tokens) are read with hs/api/params.py.

Handlers are `async def handler(request) -> (status, body)`; the app wraps them, so they stay thin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from hs.errors import MatrixError, bad_json

if TYPE_CHECKING:
    from hs.server import HomeServer

JsonDict = dict[str, Any]
HandlerResult = tuple[int, Any] | web.StreamResponse
Handler = Callable[[web.Request], Awaitable[HandlerResult]]

CLIENT_V3 = ("/_matrix/client/v3", "/_matrix/client/r0")
CLIENT_V3_V1 = ("/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/api/v1")
CLIENT_V1 = ("/_matrix/client/v1",)
HS_KEY = web.AppKey("hs", object)


@dataclass(frozen=True)
class Route:
    """One endpoint: where it is mounted, which worker group serves it, and its handler.

    `group` names the endpoint group of the seed's table (sync, client_reader, event_send, typing,
    ...); `hs routes` and the role table use it to decide which process serves the route.
    """

    method: str
    path: str
    handler: Handler
    group: str
    prefixes: tuple[str, ...] = CLIENT_V3
    resource: str = "client"
    name: str = field(default="")
    # Mounted before the other routes: aiohttp tries the routes under one literal prefix (such as
    # /_matrix/client/v3/rooms, ~20 of them) in order, so the busiest endpoint goes first. Only for a
    # pattern no earlier route could also match.
    first: bool = False

    def full_paths(self) -> list[str]:
        return [p + self.path for p in self.prefixes] if self.prefixes else [self.path]


def get_hs(request: web.Request) -> HomeServer:
    return request.app[HS_KEY]  # type: ignore[return-value]


async def parse_json(request: web.Request, allow_empty: bool = False) -> JsonDict:
    """The request body as a JSON object, or the spec's error: M_NOT_JSON / M_BAD_JSON."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.") from None
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object.")
    return body


def json_response(code: int, body: Any) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")
