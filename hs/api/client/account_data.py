"""Account data (global and per room) and room tags, which are the room account data type `m.tag`.

Only the user themself may read or write their account data. Types the server manages (`m.fully_read`,
`m.push_rules`) are refused with 405 M_BAD_JSON, as the spec's "Server Behaviour" requires.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from hs.api.base import HandlerResult, JsonDict, Route, get_hs, get_own_requester, parse_json
from hs.api.params import path_room_id
from hs.db.stores.account_data import GLOBAL
from hs.errors import bad_json, invalid_param, not_found
from hs.services.visibility import IGNORED_USER_LIST

SERVER_MANAGED_TYPES = ("m.fully_read", "m.push_rules")
TAG_TYPE = "m.tag"
MAX_TAG_BYTES = 255
MAX_TYPE_BYTES = 255
GROUP = "account_data"


async def _own_user(request: web.Request) -> str:
    """The path's user ID, if it is the requester's own; else 403 M_FORBIDDEN."""
    requester = await get_own_requester(request, "Cannot access account data of other users.")
    return requester.user_id


def _data_type(request: web.Request) -> str:
    data_type = request.match_info["type"]
    if not data_type or len(data_type.encode()) > MAX_TYPE_BYTES:
        raise invalid_param(f"Account data type must be 1 to {MAX_TYPE_BYTES} bytes")
    return data_type


def _check_settable(data_type: str) -> None:
    if data_type in SERVER_MANAGED_TYPES:
        raise bad_json(f"Cannot set {data_type} through this API.", status=405)


# -- account data ------------------------------------------------------------------------------------------
async def _get(request: web.Request, room_id: str) -> HandlerResult:
    user_id = await _own_user(request)
    data_type = _data_type(request)
    content = await get_hs(request).account_data_stream.store.get(user_id, room_id, data_type)
    if content is None:
        raise not_found("Room account data not found." if room_id else "Account data not found.")
    return 200, content


async def _put(request: web.Request, room_id: str) -> HandlerResult:
    user_id = await _own_user(request)
    data_type = _data_type(request)
    _check_settable(data_type)
    body = await parse_json(request)
    ignoring = body.get("ignored_users") if data_type == IGNORED_USER_LIST and room_id == GLOBAL else None
    if isinstance(ignoring, dict) and user_id in ignoring:
        raise invalid_param("You cannot ignore yourself")  # as Synapse refuses it
    await get_hs(request).account_data_stream.set(user_id, room_id, data_type, body)
    return 200, {}


async def get_global(request: web.Request) -> HandlerResult:
    return await _get(request, GLOBAL)


async def put_global(request: web.Request) -> HandlerResult:
    return await _put(request, GLOBAL)


async def get_room(request: web.Request) -> HandlerResult:
    return await _get(request, path_room_id(request))


async def put_room(request: web.Request) -> HandlerResult:
    return await _put(request, path_room_id(request))


# -- tags --------------------------------------------------------------------------------------------------
def _tags_of(content: JsonDict | None) -> dict[str, Any]:
    tags = (content or {}).get("tags")
    return dict(tags) if isinstance(tags, dict) else {}


def _tag_name(request: web.Request) -> str:
    tag = request.match_info["tag"]
    if not tag or len(tag.encode()) > MAX_TAG_BYTES:
        raise invalid_param(f"Tag names must be 1 to {MAX_TAG_BYTES} bytes")
    return tag


async def get_tags(request: web.Request) -> HandlerResult:
    user_id = await _own_user(request)
    room_id = path_room_id(request)
    content = await get_hs(request).account_data_stream.store.get(user_id, room_id, TAG_TYPE)
    return 200, {"tags": _tags_of(content)}


async def put_tag(request: web.Request) -> HandlerResult:
    user_id = await _own_user(request)
    room_id = path_room_id(request)
    tag = _tag_name(request)
    body = await parse_json(request)
    if "order" in body:
        order = body["order"]
        if isinstance(order, bool) or not isinstance(order, int | float) or not math.isfinite(order):
            raise bad_json("'order' must be a number")

    def change(current: JsonDict | None) -> JsonDict:
        tags = _tags_of(current)
        tags[tag] = body
        return {**(current or {}), "tags": tags}

    await get_hs(request).account_data_stream.update(user_id, room_id, TAG_TYPE, change)
    return 200, {}


async def delete_tag(request: web.Request) -> HandlerResult:
    user_id = await _own_user(request)
    room_id = path_room_id(request)
    tag = _tag_name(request)

    def change(current: JsonDict | None) -> JsonDict | None:
        tags = _tags_of(current)
        if tag not in tags:
            return None  # nothing to remove: no new stream position
        del tags[tag]
        return {**(current or {}), "tags": tags}

    await get_hs(request).account_data_stream.update(user_id, room_id, TAG_TYPE, change)
    return 200, {}


ROUTES: list[Route] = [
    Route("GET", "/user/{userId}/account_data/{type}", get_global, GROUP),
    Route("PUT", "/user/{userId}/account_data/{type}", put_global, GROUP),
    Route("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}", get_room, GROUP),
    Route("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}", put_room, GROUP),
    Route("GET", "/user/{userId}/rooms/{roomId}/tags", get_tags, GROUP),
    Route("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}", put_tag, GROUP),
    Route("DELETE", "/user/{userId}/rooms/{roomId}/tags/{tag}", delete_tag, GROUP),
]
