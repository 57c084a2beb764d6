"""Federation endpoints about rooms: transactions, membership handshakes, and reads of events and state.

Each handler authenticates the origin (X-Matrix), parses, and hands over to hs/federation/.
"""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, parse_json
from hs.api.params import query_int, query_list, query_str
from hs.errors import bad_json, missing_param
from hs.events.event import Event
from hs.federation.request_auth import authenticate_origin

V1 = ("/_matrix/federation/v1",)
V2 = ("/_matrix/federation/v2",)


def _path(request: web.Request, name: str) -> str:
    return request.match_info[name]


async def send_transaction(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    hs = get_hs(request)
    body = await parse_json(request)
    return 200, await hs.federation_transactions.on_transaction(origin, _path(request, "txnId"), body)


async def _make(request: web.Request, membership: str) -> HandlerResult:
    origin = await authenticate_origin(request)
    hs = get_hs(request)
    versions = query_list(request, "ver", max_items=100) if membership in ("join", "knock") else None
    if membership == "join" and not versions:
        versions = ["1"]  # the spec: a server that names no version supports only room version 1
    return 200, await hs.federation_membership.make_membership(
        origin, _path(request, "roomId"), _path(request, "userId"), membership, versions)


async def make_join(request: web.Request) -> HandlerResult:
    return await _make(request, "join")


async def make_leave(request: web.Request) -> HandlerResult:
    return await _make(request, "leave")


async def make_knock(request: web.Request) -> HandlerResult:
    return await _make(request, "knock")


async def _send(request: web.Request, membership: str) -> Event:
    origin = await authenticate_origin(request)
    hs = get_hs(request)
    pdu = await parse_json(request)
    return await hs.federation_membership.on_send_membership(
        origin, _path(request, "roomId"), _path(request, "eventId"), pdu, membership)


async def send_join_v2(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    event = await _send(request, "join")
    return 200, await hs.federation_membership.send_join_response(event)


async def send_join_v1(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    event = await _send(request, "join")
    return 200, [200, await hs.federation_membership.send_join_response(event)]


async def send_leave_v2(request: web.Request) -> HandlerResult:
    await _send(request, "leave")
    return 200, {}


async def send_leave_v1(request: web.Request) -> HandlerResult:
    await _send(request, "leave")
    return 200, [200, {}]


async def send_knock(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    event = await _send(request, "knock")
    return 200, await hs.federation_membership.send_knock_response(event)


async def get_event(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    return 200, await get_hs(request).federation_room_reads.get_event(origin, _path(request, "eventId"))


def _event_id_param(request: web.Request) -> str:
    event_id = query_str(request, "event_id")
    if event_id is None:
        raise missing_param("Missing parameter: event_id")
    return event_id


async def state_ids(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    return 200, await get_hs(request).federation_room_reads.state_ids(
        origin, _path(request, "roomId"), _event_id_param(request))


async def state(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    return 200, await get_hs(request).federation_room_reads.state(
        origin, _path(request, "roomId"), _event_id_param(request))


async def event_auth(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    return 200, await get_hs(request).federation_room_reads.event_auth(
        origin, _path(request, "roomId"), _path(request, "eventId"))


async def get_missing_events(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    body = await parse_json(request)
    earliest, latest = body.get("earliest_events", []), body.get("latest_events", [])
    if not (isinstance(earliest, list) and isinstance(latest, list)
            and all(isinstance(e, str) for e in [*earliest, *latest])) or len(earliest) + len(latest) > 100:
        raise bad_json("earliest_events and latest_events must be short lists of event IDs")
    limit, min_depth = body.get("limit", 10), body.get("min_depth", 0)
    if not isinstance(limit, int) or not isinstance(min_depth, int):
        raise bad_json("limit and min_depth must be integers")
    return 200, await get_hs(request).federation_room_reads.get_missing_events(
        origin, _path(request, "roomId"), earliest, latest, limit, min_depth)


async def backfill(request: web.Request) -> HandlerResult:
    origin = await authenticate_origin(request)
    from_ids = query_list(request, "v")
    if not from_ids:
        raise missing_param("Missing parameter: v")
    limit = query_int(request, "limit", 10, minimum=0, maximum=1000, clamp=True)
    return 200, await get_hs(request).federation_room_reads.backfill(
        origin, _path(request, "roomId"), from_ids, limit)


def _v1(method: str, path: str, handler: object, group: str = "federation") -> Route:
    return Route(method, path, handler, group, prefixes=V1, resource="federation")  # type: ignore[arg-type]


ROUTES: list[Route] = [
    # Any federation reader takes /send (the proxy hashes it by origin: routes.py, proxy.py).
    _v1("PUT", "/send/{txnId}", send_transaction),
    _v1("GET", "/make_join/{roomId}/{userId}", make_join),
    _v1("GET", "/make_leave/{roomId}/{userId}", make_leave),
    _v1("GET", "/make_knock/{roomId}/{userId}", make_knock),
    _v1("PUT", "/send_join/{roomId}/{eventId}", send_join_v1),
    Route("PUT", "/send_join/{roomId}/{eventId}", send_join_v2, "federation", prefixes=V2, resource="federation"),
    _v1("PUT", "/send_leave/{roomId}/{eventId}", send_leave_v1),
    Route("PUT", "/send_leave/{roomId}/{eventId}", send_leave_v2, "federation", prefixes=V2, resource="federation"),
    _v1("PUT", "/send_knock/{roomId}/{eventId}", send_knock),
    _v1("GET", "/event/{eventId}", get_event),
    _v1("GET", "/state_ids/{roomId}", state_ids),
    _v1("GET", "/state/{roomId}", state),
    _v1("GET", "/event_auth/{roomId}/{eventId}", event_auth),
    _v1("POST", "/get_missing_events/{roomId}", get_missing_events),
    _v1("GET", "/backfill/{roomId}", backfill),
]
