"""The `replication` resource: calls other instances make to this one as a stream writer.

- POST /_hs/replication/send_event      build + persist an event in a room this instance writes
- POST /_hs/replication/create_room     build and persist a new room's events in one transaction
                                        (its create event built by the caller)
- GET  /_hs/replication/positions       this instance's positions of the streams it writes
- ANY  /_hs/replication/client/<path>   a client request forwarded by a worker that does not own
                                        the stream it writes; answered by the same handler

Every request must carry `Authorization: Bearer <worker_replication_secret>`; forwarded client
requests carry the user's own header as X-Hs-Forwarded-Authorization. Replies carry this instance's
stream positions so the caller can wait until it has seen its own write.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from hs.api.base import get_hs, json_response
from hs.db.stores.rooms import NewRoom, RoomIdTaken
from hs.errors import bad_json, bad_request, forbidden, not_json, room_id_taken
from hs.events.auth import AuthError, check_auth_rules
from hs.events.event import Event
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.replication import federation_calls
from hs.replication.http_client import FORWARDED_AUTH_HEADER, POSITIONS_HEADER, REPLICATION_PREFIX
from hs.services.auth import set_massaged_ts
from hs.services.new_room import InitialEvent
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

_replies: LruCache[str, dict[str, Any]] = LruCache(10000, name="replication.http_server.replies")


def writer_positions(hs: HomeServer) -> dict[str, int]:
    """This instance's own position in every stream it writes (its rows only: the caller waits for
    this writer, not for the stream's other writers)."""
    out = {}
    for stream in hs.streams.values():
        if hs.instance_name in stream.writers:
            out[stream.NAME] = stream.writer_position(hs.instance_name)
    return out


@web.middleware
async def replication_auth(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if not request.path.startswith(REPLICATION_PREFIX):
        return await handler(request)
    hs = get_hs(request)
    secret = hs.config.get_replication_secret()
    if secret is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
            return json_response(403, {"errcode": "M_FORBIDDEN", "error": "Invalid replication secret"})
    if request.path.startswith(REPLICATION_PREFIX + "/client/"):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        forwarded = request.headers.get(FORWARDED_AUTH_HEADER)
        if forwarded:
            headers["Authorization"] = forwarded
        request = request.clone(headers=headers)
    resp = await handler(request)
    if not resp.prepared:
        resp.headers[POSITIONS_HEADER] = orjson.dumps(writer_positions(hs)).decode()
    return resp


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise not_json("replication body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_json("replication body must be an object")
    return body


async def send_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    cached = _replies.get(str(body.get("txn_id")))
    if cached is not None:
        return 200, cached
    room_id = body["room_id"]
    if not hs.events_stream.is_writer_for_room(room_id):
        raise bad_request(f"{hs.instance_name} does not write events for {room_id}")
    txn = tuple(body["txn"]) if body.get("txn") else None
    co_sign = hs.federation_membership.co_sign_invite if body.get("co_sign_invite") is True else None
    ts = body.get("origin_server_ts")  # an application service's `ts` (the worker's request carried it)
    set_massaged_ts(ts if isinstance(ts, int) and not isinstance(ts, bool) else None)
    event = await hs.event_sender.send(room_id, body["sender"], body["type"], body["content"],
                                       state_key=body.get("state_key"), txn=txn,
                                       redacts=body.get("redacts"), before_persist=co_sign)
    reply = {"event_id": event.event_id, "stream_ordering": event.internal.stream_ordering}
    _replies.set(str(body.get("txn_id")), reply)
    return 200, reply


async def create_room(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    cached = _replies.get(str(body.get("txn_id")))
    if cached is not None:
        return 200, cached
    rv = KNOWN_ROOM_VERSIONS[body["room_version"]]
    create = Event(body["pdu"], rv)
    if not hs.events_stream.is_writer_for_room(create.room_id):
        raise bad_request(f"{hs.instance_name} does not write events for {create.room_id}")
    try:
        check_auth_rules(create, {})
    except AuthError as e:
        raise forbidden(str(e)) from None
    initial = [InitialEvent.from_json(e) for e in body["events"]]
    try:
        events = await hs.event_sender.persist_new_room(create, initial, NewRoom.from_json(body["room"]))
    except RoomIdTaken:
        raise room_id_taken(f"{create.room_id} exists") from None
    reply = {"room_id": create.room_id, "stream_ordering": events[-1].internal.stream_ordering}
    _replies.set(str(body.get("txn_id")), reply)
    return 200, reply


async def device_list_change(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    if not hs.device_lists_stream.is_writer:
        raise bad_request(f"{hs.instance_name} does not write device_lists")
    position = await hs.device_lists_stream.record_change(body["user_id"], body.get("device_id"))
    return 200, {"position": position}


async def typing_snapshot(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    if not hs.typing_stream.is_writer:
        raise bad_request(f"{hs.instance_name} does not write typing")
    return 200, hs.typing_stream.snapshot()


async def positions(request: web.Request) -> tuple[int, Any]:
    return 200, {"instance": get_hs(request).instance_name, "positions": writer_positions(get_hs(request))}


REPLICATION_ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[tuple[int, Any]]]]] = [
    ("POST", f"{REPLICATION_PREFIX}/send_event", send_event),
    ("POST", f"{REPLICATION_PREFIX}/create_room", create_room),
    ("GET", f"{REPLICATION_PREFIX}/positions", positions),
    ("POST", f"{REPLICATION_PREFIX}/typing_snapshot", typing_snapshot),
    ("POST", f"{REPLICATION_PREFIX}/device_list_change", device_list_change),
    *federation_calls.ROUTES,  # a federation reader's hand-overs to writers
]
