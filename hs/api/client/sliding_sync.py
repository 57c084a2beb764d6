"""Sliding sync (MSC4186) in its two shapes: Synapse's unstable
`POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (`pos`, `timeout` in the query) and
the stable `POST /_matrix/client/v4/sync` (everything in the body). Both are parsed into one request
(hs/services/sliding_sync/request.py), computed by hs.sliding_sync, and rendered back in the shape
asked: the unstable one as Synapse encodes it (`lists.{name}.ops`, `timeline`, `invite_state`), the
stable one with `timeline_events`, `stripped_state` and `membership`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import query_enum, query_int, query_str
from hs.services.sliding_sync.request import MAX_TIMEOUT_MS, PRESENCE_STATES, Shape, parse_request
from hs.services.sliding_sync.room_data import RoomResult
from hs.services.sliding_sync.service import SlidingSyncResponse

UNSTABLE_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
STABLE_PATH = "/_matrix/client/v4/sync"


async def unstable_sync(request: web.Request) -> HandlerResult:
    return await _sync(request, "unstable")


async def stable_sync(request: web.Request) -> HandlerResult:
    return await _sync(request, "v4")


async def _sync(request: web.Request, shape: Shape) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    if shape == "unstable":
        timeout = query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS, clamp=True)
        pos = query_str(request, "pos")
        set_presence = query_enum(request, "set_presence", PRESENCE_STATES, "online") or "online"
        parsed = parse_request(body, shape, user_id=requester.user_id, device_id=requester.device_id,
                               pos=pos, timeout_ms=timeout, set_presence=set_presence)
    else:
        parsed = parse_request(body, shape, user_id=requester.user_id, device_id=requester.device_id)
    # (A server stop during the long-poll is answered by the service as an expired timeout.)
    response = await hs.sliding_sync.sync(parsed, still_wanted=lambda: request.transport is not None)
    return 200, render(response, shape)


def render(response: SlidingSyncResponse, shape: Shape) -> dict[str, Any]:
    lists: dict[str, Any] = {}
    for name, result in response.lists.items():
        if shape == "unstable":
            lists[name] = {"count": result.count,
                           "ops": [{"op": "SYNC", "range": list(rng), "room_ids": list(ids)}
                                   for rng, ids in zip(result.ranges, result.room_ids, strict=True)]}
        else:
            lists[name] = {"count": result.count}
    return {
        "pos": response.pos,
        "lists": lists,
        "rooms": {room_id: _room(entry, shape) for room_id, entry in response.rooms.items()},
        "extensions": response.extensions,
    }


def _room(entry: RoomResult, shape: Shape) -> dict[str, Any]:
    out: dict[str, Any] = {"notification_count": entry.notification_count,
                           "highlight_count": entry.highlight_count,
                           "bump_stamp": entry.bump_stamp}
    if entry.joined_count is not None:
        out["joined_count"] = entry.joined_count
    if entry.invited_count is not None:
        out["invited_count"] = entry.invited_count
    if entry.name:
        out["name"] = entry.name
    if entry.avatar:
        out["avatar"] = entry.avatar
    if entry.heroes:
        out["heroes"] = entry.heroes
    if entry.initial:
        out["initial"] = True
    if entry.is_dm:
        out["is_dm"] = True
    if entry.required_state:
        out["required_state"] = entry.required_state
    if entry.timeline:
        out["timeline" if shape == "unstable" else "timeline_events"] = entry.timeline
    if entry.limited is not None:
        out["limited"] = entry.limited
    if entry.prev_batch is not None:
        out["prev_batch"] = entry.prev_batch
    if entry.num_live is not None:
        out["num_live"] = entry.num_live
    if entry.stripped_state:
        out["invite_state" if shape == "unstable" else "stripped_state"] = entry.stripped_state
    if entry.expanded_timeline and shape == "unstable":
        out["unstable_expanded_timeline"] = True
    if shape == "v4":
        out["membership"] = entry.membership
    return out


ROUTES: list[Route] = [
    Route("POST", UNSTABLE_PATH, unstable_sync, "sync", prefixes=()),
    Route("POST", STABLE_PATH, stable_sync, "sync", prefixes=()),
]
