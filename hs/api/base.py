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

from hs.api.params import path_room_id, query_int, query_str
from hs.errors import bad_json, forbidden, missing_token, not_json, unknown_token
from hs.replication.http_client import REPLICATION_PREFIX
from hs.services.auth import TS_ROUTES, enter_request, guest_route

if TYPE_CHECKING:
    from hs.appservice.registration import ApplicationService
    from hs.server import HomeServer
    from hs.services.auth import Requester

JsonDict = dict[str, Any]
MAX_USER_ID_LENGTH = 255  # an application service's `user_id` parameter (the spec's limit on user IDs)
MSC3202_DEVICE_ID = "org.matrix.msc3202.device_id"  # `device_id`'s unstable name, which mautrix also sends
HandlerResult = tuple[int, Any] | web.StreamResponse
Handler = Callable[[web.Request], Awaitable[HandlerResult]]

CLIENT_V3 = ("/_matrix/client/v3", "/_matrix/client/r0")
CLIENT_V3_V1 = ("/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/api/v1")
CLIENT_V1 = ("/_matrix/client/v1",)
# Every response carries these, so web clients on other origins can call the API and show media.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "Synapse-Trace-Id, Server",
}
# Typed by its annotation alone (the HomeServer class is imported only for type checking here).
HS_KEY: web.AppKey[HomeServer] = web.AppKey("hs")


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
    return request.app[HS_KEY]


def extract_token(request: web.Request) -> str | None:
    """The access token: the Authorization header's bearer token, else the `access_token` parameter."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise missing_token("Invalid Authorization header")
        return token.strip()
    return request.query.get("access_token")


def client_address(request: web.Request) -> str:
    """The client's IP: X-Forwarded-For's first hop when the listener it came in on trusts it."""
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        try:
            hs = get_hs(request)
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            port = sock[1] if isinstance(sock, tuple) and len(sock) >= 2 else None
            if any(lst.x_forwarded and lst.port == port for lst in hs.config.listeners_for(hs.instance_name)):
                return forwarded.split(",")[0].strip()
        except Exception:  # pragma: no cover - defensive: fall back to the peer address
            pass
    return request.remote or "unknown"


async def get_optional_requester(request: web.Request) -> Requester | None:
    """Who sent the request (None without an access token), their device's sighting noted."""
    token = extract_token(request)
    if token is None:
        return None
    auth = get_hs(request).auth
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else request.path
    address = client_address(request)  # X-Forwarded-For only from listeners with x_forwarded
    service = auth.app_service_for_token(token, address)
    if service is not None:
        # An application service: whom it acts as (`user_id`, `device_id`), and on PUT /send and /state
        # the timestamp of the event (`ts`, a timestamp as origin_server_ts takes: 400 otherwise).
        ts = query_int(request, "ts", None) if guest_route(request.method, template) in TS_ROUTES else None
        requester: Requester = await auth.authenticate(
            token, user_id=query_str(request, "user_id", max_length=MAX_USER_ID_LENGTH),
            device_id=query_str(request, "device_id") or query_str(request, MSC3202_DEVICE_ID), ts=ts,
            address=address)
    else:
        requester = await auth.authenticate(token)
    enter_request(requester)
    if requester.is_guest and not request.path.startswith(REPLICATION_PREFIX):
        # Guests may call only the endpoints the auth service lists for them (checked where the client's
        # request arrived, not again where a worker forwards it).
        auth.check_guest_access(requester, request.method, template)
    if not request.path.startswith(REPLICATION_PREFIX) and requester.app_service is None:
        # (A worker forwarding the client's request is no sighting: the address would be the worker's.
        # Nor is an application service's request, as Synapse's default track_appservice_user_ips.)
        auth.saw(requester.user_id, requester.device_id, None if address == "unknown" else address,
                 request.headers.get("User-Agent"))
    return requester


def get_app_service(request: web.Request) -> ApplicationService:
    """The application service whose as_token the request carries, whomever its `user_id` names (for
    registering and logging in that user, who may not exist yet): 401 M_MISSING_TOKEN without a token,
    M_UNKNOWN_TOKEN with another token."""
    token = extract_token(request)
    if token is None:
        raise missing_token("Missing access token")
    service = get_hs(request).auth.app_service_for_token(token, client_address(request))
    if service is None:
        raise unknown_token("This is only valid for application services")
    return service


async def get_requester(request: web.Request) -> Requester:
    """Who sent the request, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    requester = await get_optional_requester(request)
    if requester is None:
        raise missing_token("Missing access token")
    return requester


async def get_requester_and_room(request: web.Request) -> tuple[Requester, str]:
    """The requester and the path's `{roomId}` (checked), for the endpoints about one room."""
    requester = await get_requester(request)
    return requester, path_room_id(request)


async def get_own_requester(request: web.Request, refusal: str) -> Requester:
    """The requester, when the path's `{userId}` is theirs; else 403 M_FORBIDDEN saying `refusal`."""
    requester = await get_requester(request)
    if request.match_info["userId"] != requester.user_id:
        raise forbidden(refusal)
    return requester


def uia_operation(request: web.Request) -> tuple[str, str]:
    """What a user-interactive authentication session is for: the request's method and path."""
    return request.method, request.path


async def parse_json(request: web.Request, allow_empty: bool = False) -> JsonDict:
    """The request body as a JSON object, or the spec's error: M_NOT_JSON / M_BAD_JSON."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise not_json("Content not JSON.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise not_json("Content not JSON.") from None
    if not isinstance(body, dict):
        raise bad_json("Content must be a JSON object.")
    return body


def json_response(code: int, body: Any) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")
