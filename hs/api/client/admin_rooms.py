"""Synapse's room admin API (its docs "Rooms" and "Purge History"), for server admins; the work is
hs/services/admin_rooms.py's:

- GET    /_synapse/admin/v1/rooms with `from`, `limit`, `order_by`, `dir`, `search_term`, `public_rooms`,
         `empty_rooms`: `{"rooms", "offset", "total_rooms", "next_batch"?, "prev_batch"?}`;
- GET    /_synapse/admin/v1/rooms/{roomId}: the room's details; .../members: `{"members", "total"}`;
         .../state: `{"state": [events]}`;
- DELETE /_synapse/admin/v2/rooms/{roomId} with `block`, `purge`, `force_purge`, `new_room_user_id`,
         `room_name`, `message`: `{"delete_id"}`, the deletion running in the background; its status from
         GET /_synapse/admin/v2/rooms/{roomId}/delete_status (`{"results": [...]}`) and
         GET /_synapse/admin/v2/rooms/delete_status/{deleteId}; DELETE /_synapse/admin/v1/rooms/{roomId}
         the same, answering when done with the result (`kicked_users`, `failed_to_kick_users`,
         `local_aliases`, `new_room_id`);
- GET/PUT /_synapse/admin/v1/rooms/{roomId}/block: `{"block", "user_id"?}`;
- POST   /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin with optional `user_id`: `{}`;
- POST   /_synapse/admin/v1/purge_history/{roomId}[/{eventId}] with `delete_local_events`,
         `purge_up_to_event_id` or `purge_up_to_ts`: `{"purge_id"}`; its status from
         GET /_synapse/admin/v1/purge_history_status/{purgeId}.

Errors are Synapse's: 401 without a token, 403 M_FORBIDDEN for a non-admin, 404 "Room not found", 400
M_INVALID_PARAM for a bad room ID or parameter. Every call is logged with the admin who made it.

A deletion with `new_room_user_id` (and optional `room_name`, `message`) moves the joined local members
to a new room that user makes, and the local aliases with them, as Synapse's.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, parse_json
from hs.api.client.admin_tokens import require_admin
from hs.api.params import (
    MAX_OFFSET,
    body_bool,
    body_int,
    path_room_id,
    query_enum,
    query_fields,
    query_int,
    query_limit,
    query_str,
)
from hs.errors import bad_json, bad_request, invalid_param, missing_param, not_found
from hs.events.auth import get_domain
from hs.services.admin_rooms import ROOM_ORDERS, AdminRooms, Job, NewRoomSpec

logger = logging.getLogger(__name__)

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
MAX_LIMIT = 1000
MAX_ID_LENGTH = 255
MAX_TEXT_LENGTH = 10_000


def _tristate(request: web.Request, name: str) -> bool | None:
    value = query_enum(request, name, ("true", "false"))
    return None if value is None else value == "true"


def _part(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


# -- reading -------------------------------------------------------------------------------------------------
async def list_rooms(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, MAX_LIMIT, minimum=0)
    order_by = query_enum(request, "order_by", ROOM_ORDERS, "name")
    assert order_by is not None
    backwards = query_enum(request, "dir", ("f", "b"), "f") == "b"
    if ("search_term", "") in query_fields(request):
        raise invalid_param("search_term cannot be an empty string")
    search_term = query_str(request, "search_term", max_length=MAX_ID_LENGTH)
    logger.info("admin %s lists rooms (order %s, search %r)", by, order_by, search_term)
    rooms, total = await AdminRooms(get_hs(request)).list_rooms(
        offset, limit, order_by, backwards, search_term, _tristate(request, "public_rooms"),
        _tristate(request, "empty_rooms"))
    page: dict[str, Any] = {"offset": offset, "rooms": rooms, "total_rooms": total}
    if offset + limit < total:
        page["next_batch"] = offset + limit
    if offset > 0:
        page["prev_batch"] = offset - limit if offset > limit else 0
    return 200, page


async def room_details(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    logger.info("admin %s reads the details of room %s", by, room_id)
    return 200, await AdminRooms(get_hs(request)).room_details(room_id)


async def room_members(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    admin = AdminRooms(get_hs(request))
    await admin.require_room(room_id)
    logger.info("admin %s lists the members of room %s", by, room_id)
    members = await admin.members(room_id)
    return 200, {"members": members, "total": len(members)}


async def room_state(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    admin = AdminRooms(get_hs(request))
    await admin.require_room(room_id)
    logger.info("admin %s reads the state of room %s", by, room_id)
    return 200, {"state": await admin.state(room_id)}


# -- blocking ------------------------------------------------------------------------------------------------
async def get_block(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    logger.info("admin %s reads whether room %s is blocked", by, room_id)
    return 200, await AdminRooms(get_hs(request)).block_status(room_id)


async def put_block(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    body = await parse_json(request)
    if "block" not in body:
        raise missing_param("Missing params: ['block']")
    block = body["block"]
    if not isinstance(block, bool):
        raise bad_json("Param 'block' must be a boolean.")
    await AdminRooms(get_hs(request)).set_blocked(room_id, block, by)
    logger.info("admin %s %s room %s", by, "blocked" if block else "unblocked", room_id)
    return 200, {"block": block}


# -- deleting ------------------------------------------------------------------------------------------------
async def delete_room(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    body = await parse_json(request, allow_empty=True)
    new_room = None
    if body.get("new_room_user_id") is not None:
        creator, name, message = (body.get(k) for k in ("new_room_user_id", "room_name", "message"))
        if not isinstance(creator, str) or not creator.startswith("@") or len(creator) > MAX_ID_LENGTH:
            raise bad_json("'new_room_user_id' must be a user ID")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_TEXT_LENGTH):
            raise bad_json("'room_name' must be a string")
        if message is not None and (not isinstance(message, str) or len(message) > MAX_TEXT_LENGTH):
            raise bad_json("'message' must be a string")
        new_room = NewRoomSpec(creator, name, message)
    block = body_bool(body, "block", False)
    purge = body_bool(body, "purge", True)
    force = body_bool(body, "force_purge", False)
    if force and not purge:
        raise bad_json("Cannot use 'force_purge' without 'purge'")
    admin = AdminRooms(get_hs(request))
    if request.path.startswith(V1):
        logger.info("admin %s deletes room %s (block %s, purge %s), waiting", by, room_id, block, purge)
        return 200, await admin.delete_now(room_id, by, block, purge, new_room, force)
    delete_id = await admin.start_delete(room_id, by, block, purge, new_room, force)
    logger.info("admin %s deletes room %s (block %s, purge %s): %s", by, room_id, block, purge, delete_id)
    return 200, {"delete_id": delete_id}


def _delete_status(job: Job) -> dict[str, Any]:
    status: dict[str, Any] = {"delete_id": job.job_id, "status": job.status, "shutdown_room": dict(job.result)}
    if job.error is not None:
        status["error"] = job.error
    return status


async def delete_status_by_room(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    logger.info("admin %s reads the deletions of room %s", by, room_id)
    jobs = AdminRooms(get_hs(request)).delete_jobs(room_id)
    if not jobs:
        raise not_found(f"No delete task for room_id '{room_id}' found")
    return 200, {"results": [_delete_status(j) for j in jobs]}


async def delete_status_by_id(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    delete_id = _part(request, "deleteId")
    logger.info("admin %s reads deletion %s", by, delete_id)
    job = AdminRooms(get_hs(request)).delete_job(delete_id)
    if job is None:
        raise not_found(f"delete id '{delete_id}' not found")
    status = _delete_status(job)
    del status["delete_id"]
    return 200, status


# -- room admin ----------------------------------------------------------------------------------------------
async def make_room_admin(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    hs = get_hs(request)
    identifier = _part(request, "roomIdOrAlias")
    if not identifier.startswith(("!", "#")):
        raise invalid_param(f"{identifier} was not legal room ID or room alias")
    room_id = await hs.room_aliases.resolve_room(identifier)
    body = await parse_json(request, allow_empty=True)
    target = body.get("user_id", by)
    if not isinstance(target, str) or not target.startswith("@") or len(target) > MAX_ID_LENGTH:
        raise bad_json("'user_id' must be a user ID")
    if get_domain(target) != hs.server_name:
        raise bad_request("Only local users can be admins of this homeserver")
    await AdminRooms(hs).make_room_admin(room_id, target)
    logger.info("admin %s made %s an admin of room %s", by, target, room_id)
    return 200, {}


# -- purging history -----------------------------------------------------------------------------------------
async def purge_history(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    room_id = path_room_id(request)
    body = await parse_json(request, allow_empty=True)
    delete_local_events = body_bool(body, "delete_local_events", False)
    event_id = request.match_info.get("eventId") or body.get("purge_up_to_event_id")
    before_ts: int | None = None
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id.startswith("$") or len(event_id) > MAX_ID_LENGTH:
            raise bad_json("'purge_up_to_event_id' must be an event ID")
    elif "purge_up_to_ts" in body:
        before_ts = body_int(body, "purge_up_to_ts", required=True)
    else:
        raise bad_json("must specify purge_up_to_event_id or purge_up_to_ts")
    purge_id = await AdminRooms(get_hs(request)).start_purge_history(room_id, event_id, before_ts,
                                                                     delete_local_events)
    logger.info("admin %s purges the history of %s up to %s (local events too: %s): %s", by, room_id,
                event_id or before_ts, delete_local_events, purge_id)
    return 200, {"purge_id": purge_id}


async def purge_history_status(request: web.Request) -> HandlerResult:
    by = await require_admin(request)
    purge_id = _part(request, "purgeId")
    logger.info("admin %s reads purge %s", by, purge_id)
    job = AdminRooms(get_hs(request)).purge_job(purge_id)
    if job is None:
        raise not_found(f"purge id '{purge_id}' not found")
    status: dict[str, Any] = {"status": job.status}
    if job.error is not None:
        status["error"] = job.error
    return 200, status


def _route(method: str, path: str, handler: Handler) -> Route:
    return Route(method, path, handler, "main", prefixes=(), resource="client")


# /rooms/delete_status/{deleteId} before /rooms/{roomId}/..., whose shape it could have.
ROUTES: list[Route] = [
    _route("GET", V1 + "/rooms", list_rooms),
    _route("GET", V2 + "/rooms/delete_status/{deleteId}", delete_status_by_id),
    _route("GET", V1 + "/rooms/{roomId}", room_details),
    _route("GET", V1 + "/rooms/{roomId}/members", room_members),
    _route("GET", V1 + "/rooms/{roomId}/state", room_state),
    _route("GET", V1 + "/rooms/{roomId}/block", get_block),
    _route("PUT", V1 + "/rooms/{roomId}/block", put_block),
    _route("POST", V1 + "/rooms/{roomIdOrAlias}/make_room_admin", make_room_admin),
    _route("DELETE", V1 + "/rooms/{roomId}", delete_room),
    _route("DELETE", V2 + "/rooms/{roomId}", delete_room),
    _route("GET", V2 + "/rooms/{roomId}/delete_status", delete_status_by_room),
    _route("POST", V1 + "/purge_history/{roomId}", purge_history),
    _route("POST", V1 + "/purge_history/{roomId}/{eventId}", purge_history),
    _route("GET", V1 + "/purge_history_status/{purgeId}", purge_history_status),
]
