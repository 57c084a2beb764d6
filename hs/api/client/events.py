"""Sending events (messages, state, redactions) and reading them back: a single event, /messages
pagination and /context. The logic lives in `hs/services/room_sending.py` and `room_history.py`."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from hs.api.base import (
    CLIENT_V1,
    CLIENT_V3_V1,
    Route,
    get_hs,
    get_requester,
    get_requester_and_room,
    parse_json,
)
from hs.api.params import (
    MAX_JSON_QUERY_LENGTH,
    path_room_id,
    query_enum,
    query_limit,
    query_pagination_token,
    query_required_int,
    query_str,
)
from hs.errors import bad_json, missing_param, not_found, not_json
from hs.federation.timestamps import event_near_timestamp
from hs.services.room_history import MAX_LIMIT, EventFilter

DIRECTIONS = ("b", "f")
DEFAULT_LIMIT = 10


def _filter(request: web.Request) -> EventFilter:
    raw = query_str(request, "filter", max_length=MAX_JSON_QUERY_LENGTH)
    if raw is None:
        return EventFilter()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise not_json("'filter' is not valid JSON") from None
    return EventFilter.parse(parsed)


async def send_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    content = await parse_json(request)
    event_id = await hs.client_event_sender.send_event(requester, room_id, request.match_info["eventType"], content,
                                         request.match_info["txnId"])
    return 200, {"event_id": event_id}


async def send_state(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    content = await parse_json(request)
    event_id = await hs.client_event_sender.send_state(requester, room_id, request.match_info["eventType"],
                                         request.match_info.get("stateKey", ""), content)
    return 200, {"event_id": event_id}


async def redact_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    body = await parse_json(request, allow_empty=True)
    if body.get("reason") is not None and not isinstance(body["reason"], str):
        raise bad_json("'reason' must be a string")
    event_id = await hs.client_event_sender.redact(requester, room_id, request.match_info["eventId"],
                                     request.match_info["txnId"], body)
    return 200, {"event_id": event_id}


async def get_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, await hs.room_history.get_event(requester, path_room_id(request), request.match_info["eventId"])


async def get_event_by_id(request: web.Request) -> tuple[int, Any]:
    """The deprecated GET /events/{eventId}: /rooms/{roomId}/event/{eventId} without the room."""
    hs = get_hs(request)
    requester = await get_requester(request)
    ev = await hs.event_store.get_event(request.match_info["eventId"])
    if ev is None:
        raise not_found("Event not found.")
    return 200, await hs.room_history.get_event(requester, ev.room_id, ev.event_id)


async def timestamp_to_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    ts = query_required_int(request, "ts", minimum=0)  # origin_server_ts, a BIGINT
    direction = query_enum(request, "dir", DIRECTIONS)
    if direction is None:
        raise missing_param("Missing 'dir'")
    return 200, await event_near_timestamp(hs, requester, path_room_id(request), ts, direction == "f")


async def get_messages(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    direction = query_enum(request, "dir", DIRECTIONS, "f")
    assert direction is not None
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT, minimum=0)
    filt = _filter(request)
    result = await hs.room_history.get_messages(requester, room_id, query_pagination_token(request, "from"),
                                         query_pagination_token(request, "to"), direction, limit, filt)
    return 200, result


async def get_context(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    limit = query_limit(request, DEFAULT_LIMIT, MAX_LIMIT, minimum=0)
    return 200, await hs.room_history.get_context(requester, room_id, request.match_info["eventId"], limit,
                                           _filter(request))


ROUTES: list[Route] = [
    Route("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", send_event, "event_sending", CLIENT_V3_V1,
          first=True),
    Route("PUT", "/rooms/{roomId}/state/{eventType}", send_state, "event_sending", CLIENT_V3_V1),
    Route("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}", send_state, "event_sending", CLIENT_V3_V1),
    Route("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", redact_event, "event_sending", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/event/{eventId}", get_event, "client", CLIENT_V3_V1),
    Route("GET", "/events/{eventId}", get_event_by_id, "client", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/timestamp_to_event", timestamp_to_event, "client", CLIENT_V1),
    Route("GET", "/rooms/{roomId}/messages", get_messages, "pagination", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/context/{eventId}", get_context, "client", CLIENT_V3_V1),
]
