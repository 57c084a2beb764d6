"""Synapse's users admin API (its docs "User Admin API"), for server admins, served by main:

- GET    /_synapse/admin/v2/users (and v3, where `deactivated` filters both ways): `from`, `limit`,
         `user_id`, `name`, `guests`, `admins`, `deactivated`, `locked`, `not_user_type`, `order_by`, `dir`
         -> `{"users": [...], "total": n, "next_token": "..."}`;
- GET    /_synapse/admin/v2/users/{userId}: the user's details;
- PUT    /_synapse/admin/v2/users/{userId}: create (201) or modify (200) -> the user's details;
- POST   /_synapse/admin/v1/deactivate/{userId} with `erase` -> `{"id_server_unbind_result": "success"}`;
- POST   /_synapse/admin/v1/reset_password/{userId} with `new_password`, `logout_devices` -> `{}`;
- GET    /_synapse/admin/v1/whois/{userId}: devices, sessions, connections (the user may ask about
         themselves);
- GET    /_synapse/admin/v1/users/{userId}/joined_rooms -> `{"joined_rooms": [...], "total": n}`;
- GET    /_synapse/admin/v1/users/{userId}/memberships -> `{"memberships": {roomId: membership}}`;
- GET/PUT /_synapse/admin/v1/users/{userId}/admin -> `{"admin": bool}` / `{}`;
- GET    /_synapse/admin/v2/users/{userId}/devices -> `{"devices": [...], "total": n}`;
- GET/PUT/DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}: one device, renamed
         (`display_name`) -> `{}`, deleted -> `{}`;
- POST   /_synapse/admin/v2/users/{userId}/delete_devices with `devices` -> `{}`;
- POST/DELETE /_synapse/admin/v1/users/{userId}/shadow_ban -> `{}`;
- POST   /_synapse/admin/v1/users/{userId}/login with `valid_until_ms` -> `{"access_token": ...}`;
- GET    /_synapse/admin/v1/statistics/users/media: `from`, `limit`, `from_ts`, `until_ts`, `order_by`,
         `dir`, `search_term` -> `{"users": [{user_id, displayname, media_count, media_length}], "total": n}`.

(A user's media, GET/DELETE /_synapse/admin/v1/users/{userId}/media, is the media repository's:
hs/api/client/admin_media.py.)

Errors are Synapse's: 401 without a token, 403 M_FORBIDDEN "You are not a server admin", 400 for another
server's user where only local ones make sense, 404 M_NOT_FOUND for an unknown one. Every call is logged
with the admin who made it and its target. The work is hs/services/admin_users.py's.
"""

from __future__ import annotations

import logging

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.client.account import MAX_DEVICE_DISPLAY_NAME_LEN
from hs.api.params import (
    MAX_OFFSET,
    body_bool,
    query_bool,
    query_enum,
    query_fields,
    query_int,
    query_limit,
    query_list,
    query_str,
)
from hs.db.stores.admin_users import MEDIA_STATS_ORDERS, USER_ORDERS, UserFilter
from hs.errors import bad_json, bad_request, invalid_param, missing_param, not_found
from hs.services.admin_users import AdminUsers, admin_users

logger = logging.getLogger(__name__)

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
MAX_ID_LENGTH = 255
MAX_LIMIT = 1000


async def _admin(request: web.Request) -> tuple[AdminUsers, str]:
    """The service and the requesting admin's user ID (401 without a valid token, 403 for a non-admin)."""
    hs = get_hs(request)
    requester = await get_requester(request)
    service = admin_users(hs)
    await service.require_admin(requester.user_id)
    return service, requester.user_id


def _part(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


def _user(request: web.Request, service: AdminUsers, msg: str | None = None) -> str:
    """The path's user ID (400 M_INVALID_PARAM if it is not one; with `msg`, 400 for a remote user)."""
    user_id = _part(request, "userId")
    local = service.is_local(user_id)
    if msg is not None and not local:
        raise bad_request(msg)
    return user_id


# -- reading -------------------------------------------------------------------------------------------------
def _optional_bool(request: web.Request, name: str) -> bool | None:
    return query_bool(request, name) if query_str(request, name) is not None else None


async def list_users(request: web.Request) -> HandlerResult:
    """v2: `deactivated=true` lists deactivated users too; otherwise only active ones."""
    return await _list_users(request, None if query_bool(request, "deactivated") else False)


async def list_users_v3(request: web.Request) -> HandlerResult:
    """v3: `deactivated=true` lists only deactivated users, `false` only active ones, absent both."""
    return await _list_users(request, _optional_bool(request, "deactivated"))


async def _list_users(request: web.Request, deactivated: bool | None) -> HandlerResult:
    service, by = await _admin(request)
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, MAX_LIMIT, minimum=0)
    f = UserFilter(
        user_id=query_str(request, "user_id"),
        name=query_str(request, "name"),
        guests=query_bool(request, "guests", True),
        deactivated=deactivated,
        admins=_optional_bool(request, "admins"),
        not_user_types=tuple(query_list(request, "not_user_type")) + (
            ("",) if ("not_user_type", "") in query_fields(request) else ()),
        locked=query_bool(request, "locked"),
    )
    order_by = query_enum(request, "order_by", tuple(USER_ORDERS), "name") or "name"
    descending = query_enum(request, "dir", ("f", "b"), "f") == "b"
    logger.info("admin %s lists users (from %d, limit %d)", by, offset, limit)
    return 200, await service.list_users(f, offset, limit, order_by, descending)


async def get_user(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Can only look up local users")
    logger.info("admin %s looks up %s", by, user_id)
    details = await service.details(user_id)
    if details is None:
        raise not_found("User not found")
    return 200, details


async def whois(request: web.Request) -> HandlerResult:
    """Admins, or the user about themselves (as Synapse); an unknown local user has no devices."""
    hs = get_hs(request)
    requester = await get_requester(request)
    service = admin_users(hs)
    user_id = _part(request, "userId")
    if user_id != requester.user_id:
        await service.require_admin(requester.user_id)
    _user(request, service, "Can only whois a local user")
    logger.info("%s asks whois %s", requester.user_id, user_id)
    return 200, await service.whois(user_id)


async def memberships(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service)
    logger.info("admin %s lists the room memberships of %s", by, user_id)
    return 200, {"memberships": await service.memberships(user_id)}


async def get_admin_flag(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Only local users can be admins of this homeserver")
    logger.info("admin %s asks whether %s is an admin", by, user_id)
    return 200, {"admin": await get_hs(request).user_store.is_admin(user_id)}


async def set_admin_flag(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _part(request, "userId")
    body = await parse_json(request)
    if "admin" not in body:
        raise missing_param("Missing params: ['admin']")
    _user(request, service, "Only local users can be admins of this homeserver")
    admin = bool(body["admin"])
    if user_id == by and not admin:
        raise bad_request("You may not demote yourself.")
    logger.info("admin %s sets the admin flag of %s to %s", by, user_id, admin)
    await service.store.set_flag(user_id, "admin", admin)
    return 200, {}


async def joined_rooms(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service)
    logger.info("admin %s lists the rooms %s is joined to", by, user_id)
    rooms = await service.joined_rooms(user_id)
    return 200, {"joined_rooms": rooms, "total": len(rooms)}


async def list_devices(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Can only lookup local users")
    await service.require_user(user_id, "Unknown user")
    logger.info("admin %s lists the devices of %s", by, user_id)
    devices = await service.devices(user_id)
    return 200, {"devices": devices, "total": len(devices)}


async def media_statistics(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    order_by = query_enum(request, "order_by", tuple(MEDIA_STATS_ORDERS), "user_id") or "user_id"
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, MAX_LIMIT, minimum=0)
    from_ts = query_int(request, "from_ts", 0)
    until_ts = query_int(request, "until_ts", None)
    if until_ts is not None and until_ts <= from_ts:
        raise invalid_param("Query parameter until_ts must be greater than from_ts.")
    search_term = query_str(request, "search_term")
    if search_term is None and ("search_term", "") in query_fields(request):
        raise invalid_param("Query parameter search_term cannot be an empty string.")
    descending = query_enum(request, "dir", ("f", "b"), "f") == "b"
    logger.info("admin %s reads the user media statistics", by)
    return 200, await service.media_statistics(offset, limit, from_ts, until_ts, order_by, descending, search_term)


# -- writing -------------------------------------------------------------------------------------------------
async def put_user(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _part(request, "userId")
    body = await parse_json(request)
    if not service.is_local(user_id):
        raise bad_request("This endpoint can only be used with local users")
    await service.check_put_body(body)
    current = await service.details(user_id)
    if current is None:
        logger.info("admin %s creates %s", by, user_id)
        await service.create_user(user_id, body)
        status = 201
    else:
        logger.info("admin %s modifies %s: %s", by, user_id, sorted(k for k in body if k != "password"))
        await service.modify_user(by, user_id, current, body)
        status = 200
    details = await service.details(user_id)
    assert details is not None
    return status, details


async def deactivate(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Can only deactivate local users")
    await service.require_user(user_id)
    body = await parse_json(request, allow_empty=True)
    erase = body.get("erase", False)
    if not isinstance(erase, bool):
        raise bad_json("Param 'erase' must be a boolean, if given")
    logger.info("admin %s deactivates %s (erase: %s)", by, user_id, erase)
    await service.deactivate(user_id, erase)
    return 200, {"id_server_unbind_result": "success"}


async def reset_password(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service)
    body = await parse_json(request)
    if "new_password" not in body:
        raise missing_param("Missing params: ['new_password']")
    logout_devices = body_bool(body, "logout_devices", True)
    logger.info("admin %s resets the password of %s (log out devices: %s)", by, user_id, logout_devices)
    await service.reset_password(user_id, body["new_password"], logout_devices)
    return 200, {}


async def _device_owner(request: web.Request) -> tuple[AdminUsers, str, str]:
    """The service, the admin and the path's local, existing user (400 / 404 "Unknown user")."""
    service, by = await _admin(request)
    user_id = _user(request, service, "Can only lookup local users")
    await service.require_user(user_id, "Unknown user")
    return service, by, user_id


async def get_device(request: web.Request) -> HandlerResult:
    service, by, user_id = await _device_owner(request)
    device_id = _part(request, "deviceId")
    logger.info("admin %s looks up device %s of %s", by, device_id, user_id)
    device = await service.device(user_id, device_id)
    if device is None:
        raise not_found()  # "Not found", as Synapse's device lookup
    return 200, device


async def rename_device(request: web.Request) -> HandlerResult:
    service, by, user_id = await _device_owner(request)
    device_id = _part(request, "deviceId")
    body = await parse_json(request, allow_empty=True)
    display_name = body.get("display_name")
    if display_name is not None and not isinstance(display_name, str):
        raise bad_json("'display_name' must be a string")
    if display_name is not None and len(display_name) > MAX_DEVICE_DISPLAY_NAME_LEN:
        raise invalid_param(f"Device display name is too long (max {MAX_DEVICE_DISPLAY_NAME_LEN})")
    logger.info("admin %s renames device %s of %s", by, device_id, user_id)
    if "display_name" in body:
        await service.rename_device(user_id, device_id, display_name)
    elif await service.device(user_id, device_id) is None:
        raise not_found()
    return 200, {}


async def delete_device(request: web.Request) -> HandlerResult:
    service, by, user_id = await _device_owner(request)
    device_id = _part(request, "deviceId")
    logger.info("admin %s deletes device %s of %s", by, device_id, user_id)
    await service.delete_devices(user_id, [device_id])
    return 200, {}


async def delete_devices(request: web.Request) -> HandlerResult:
    service, by, user_id = await _device_owner(request)
    body = await parse_json(request)
    devices = body.get("devices")
    if devices is None:
        raise missing_param("Missing params: ['devices']")
    if not isinstance(devices, list) or not all(isinstance(d, str) and 0 < len(d) <= MAX_ID_LENGTH for d in devices):
        raise bad_json("'devices' must be a list of device IDs")
    if len(devices) > MAX_LIMIT:
        raise invalid_param(f"At most {MAX_LIMIT} devices at once")
    logger.info("admin %s deletes %d devices of %s", by, len(devices), user_id)
    await service.delete_devices(user_id, devices)
    return 200, {}


async def shadow_ban(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Only local users can be shadow-banned")
    banned = request.method == "POST"
    logger.info("admin %s %s %s", by, "shadow-bans" if banned else "lifts the shadow-ban of", user_id)
    await service.set_shadow_banned(user_id, banned)
    return 200, {}


async def login_as(request: web.Request) -> HandlerResult:
    service, by = await _admin(request)
    user_id = _user(request, service, "Only local users can be logged in as")
    await service.require_user(user_id)
    body = await parse_json(request, allow_empty=True)
    valid_until_ms = body.get("valid_until_ms")
    if valid_until_ms is not None and (isinstance(valid_until_ms, bool) or not isinstance(valid_until_ms, int)):
        raise bad_request("'valid_until_ms' parameter must be an int")
    if user_id == by:
        raise bad_request("Cannot use admin API to login as self")
    logger.info("admin %s logs in as %s (valid until %s)", by, user_id, valid_until_ms)
    return 200, {"access_token": await service.login_as(user_id, valid_until_ms)}


def _route(method: str, path: str, handler: Handler) -> Route:
    return Route(method, path, handler, "main", prefixes=())


ROUTES: list[Route] = [
    _route("GET", V2 + "/users", list_users),
    _route("GET", "/_synapse/admin/v3/users", list_users_v3),
    _route("GET", V2 + "/users/{userId}", get_user),
    _route("PUT", V2 + "/users/{userId}", put_user),
    _route("GET", V2 + "/users/{userId}/devices", list_devices),
    _route("GET", V2 + "/users/{userId}/devices/{deviceId}", get_device),
    _route("PUT", V2 + "/users/{userId}/devices/{deviceId}", rename_device),
    _route("DELETE", V2 + "/users/{userId}/devices/{deviceId}", delete_device),
    _route("POST", V2 + "/users/{userId}/delete_devices", delete_devices),
    _route("POST", V1 + "/deactivate/{userId}", deactivate),
    _route("POST", V1 + "/reset_password/{userId}", reset_password),
    _route("GET", V1 + "/whois/{userId}", whois),
    _route("GET", V1 + "/users/{userId}/joined_rooms", joined_rooms),
    _route("GET", V1 + "/users/{userId}/memberships", memberships),
    _route("GET", V1 + "/users/{userId}/admin", get_admin_flag),
    _route("PUT", V1 + "/users/{userId}/admin", set_admin_flag),
    _route("POST", V1 + "/users/{userId}/shadow_ban", shadow_ban),
    _route("DELETE", V1 + "/users/{userId}/shadow_ban", shadow_ban),
    _route("POST", V1 + "/users/{userId}/login", login_as),
    _route("GET", V1 + "/statistics/users/media", media_statistics),
]
