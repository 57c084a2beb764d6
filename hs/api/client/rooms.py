"""Room creation, membership (join, knock, invite, leave, kick, ban, unban, forget) and reading a room's state
and members. The logic lives in `hs/services/` (room_creation, room_membership, room_state); handlers parse and validate."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import (
    CLIENT_V3,
    CLIENT_V3_V1,
    Route,
    get_hs,
    get_requester,
    get_requester_and_room,
    parse_json,
)
from hs.api.params import path_room_id, query_enum, query_list, query_pagination_token
from hs.errors import bad_json
from hs.services.room_membership import MEMBERSHIPS, join_content, require_membership_target


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise bad_json("'reason' must be a string")
    return reason


async def create_room(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    room_id = await hs.room_creator.create_room(requester, body)
    return 200, {"room_id": room_id}


async def join_room_by_id_or_alias(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    via = query_list(request, "via", "server_name")
    room_id = await hs.room_membership.join(requester, request.match_info["roomIdOrAlias"], _reason(body), via,
                                            join_content(body))
    return 200, {"room_id": room_id}


async def knock_room(request: web.Request) -> tuple[int, Any]:
    """POST /knock/{roomIdOrAlias}; `via` / `server_name` name servers to knock through (remote rooms)."""
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request, allow_empty=True)
    via = query_list(request, "via", "server_name")
    room_id = await hs.room_membership.knock(requester, request.match_info["roomIdOrAlias"], _reason(body), via)
    return 200, {"room_id": room_id}


async def join_room(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    body = await parse_json(request, allow_empty=True)
    await hs.room_membership.join(requester, room_id, _reason(body))
    return 200, {"room_id": room_id}


async def leave_room(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    body = await parse_json(request, allow_empty=True)
    await hs.room_membership.update_membership(requester, room_id, requester.user_id, "leave", _reason(body))
    return 200, {}


def _membership_action(action: str) -> Any:
    async def handler(request: web.Request) -> tuple[int, Any]:
        hs = get_hs(request)
        requester = await get_requester(request)
        room_id = path_room_id(request)
        body = await parse_json(request, allow_empty=True)
        target = require_membership_target(body)
        reason = _reason(body)
        await hs.room_membership.update_membership(requester, room_id, target, action, reason)
        return 200, {}

    handler.__name__ = f"{action}_user"
    return handler


async def forget_room(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester, room_id = await get_requester_and_room(request)
    await parse_json(request, allow_empty=True)
    await hs.room_membership.forget(requester, room_id)
    return 200, {}


async def get_room_state(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, await hs.room_state.get_state(requester, path_room_id(request))


async def get_room_state_event(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    fmt = query_enum(request, "format", ("content", "event"), "content")
    assert fmt is not None
    return 200, await hs.room_state.get_state_event(requester, path_room_id(request), request.match_info["eventType"],
                                               request.match_info.get("stateKey", ""), fmt)


async def get_members(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    membership = query_enum(request, "membership", MEMBERSHIPS)
    not_membership = query_enum(request, "not_membership", MEMBERSHIPS)
    chunk = await hs.room_state.get_members(requester, path_room_id(request), query_pagination_token(request, "at"),
                                       membership, not_membership)
    return 200, {"chunk": chunk}


async def get_joined_members(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, {"joined": await hs.room_state.get_joined_members(requester, path_room_id(request))}


async def get_joined_rooms(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    requester = await get_requester(request)
    return 200, {"joined_rooms": await hs.room_membership.joined_rooms(requester.user_id)}


ROUTES: list[Route] = [
    Route("POST", "/createRoom", create_room, "client", CLIENT_V3_V1),
    Route("POST", "/join/{roomIdOrAlias}", join_room_by_id_or_alias, "event_sending", CLIENT_V3_V1),
    Route("POST", "/knock/{roomIdOrAlias}", knock_room, "event_sending", CLIENT_V3),
    Route("POST", "/rooms/{roomId}/join", join_room, "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/leave", leave_room, "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/invite", _membership_action("invite"), "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/kick", _membership_action("kick"), "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/ban", _membership_action("ban"), "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/unban", _membership_action("unban"), "event_sending", CLIENT_V3_V1),
    Route("POST", "/rooms/{roomId}/forget", forget_room, "main", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/state", get_room_state, "client", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/state/{eventType}", get_room_state_event, "event_sending", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/state/{eventType}/{stateKey:.*}", get_room_state_event, "event_sending",
          CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/members", get_members, "client", CLIENT_V3_V1),
    Route("GET", "/rooms/{roomId}/joined_members", get_joined_members, "client", CLIENT_V3_V1),
    Route("GET", "/joined_rooms", get_joined_rooms, "client", CLIENT_V3_V1),
]
