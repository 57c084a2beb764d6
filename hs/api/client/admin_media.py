"""Synapse's media admin API (its docs "Media Admin API" and the users admin API's "list media of a
user"), for server admins, served with the media repository (group `media`):

- GET    /_synapse/admin/v1/room/{roomId}/media: `{"local": [mxc...], "remote": [mxc...]}`;
- POST   /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}, .../unquarantine/...: `{}`;
- POST   /_synapse/admin/v1/room/{roomId}/media/quarantine (and the legacy
         /_synapse/admin/v1/quarantine_media/{roomId}), /_synapse/admin/v1/user/{userId}/media/quarantine:
         `{"num_quarantined": n}`;
- POST   /_synapse/admin/v1/media/protect/{mediaId}, .../unprotect/{mediaId}: `{}`;
- GET    /_synapse/admin/v1/media/{serverName}/{mediaId}: `{"media_info": {...}}`;
- DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}, POST /_synapse/admin/v1/media/delete (and the
         legacy /_synapse/admin/v1/media/{serverName}/delete) with `before_ts`, `size_gt`, `keep_profiles`:
         `{"deleted_media": [ids], "total": n}`;
- GET/DELETE /_synapse/admin/v1/users/{userId}/media with `from`, `limit`, `order_by`, `dir`;
- POST   /_synapse/admin/v1/purge_media_cache?before_ts=: `{"deleted": n}`.

Errors are Synapse's: 401 without a token, 403 M_FORBIDDEN for a non-admin, 404 M_NOT_FOUND "Unknown
media" / "Unknown user", 400 for another server's media or user where only local ones make sense, 400
M_INVALID_PARAM for a `before_ts` that looks like seconds. Every call is logged with the admin who made
it. The work is hs/media/admin.py's.

Remote media is quarantined through its cached copy (`remote_media_cache`), as in Synapse: naming
remote media not cached here changes nothing, and a later fetch of it is served. (Synapse also
quarantines new uploads and fetches whose bytes are quarantined; in hs that check would belong to
hs/media/repository.py and hs/media/remote.py, and is not made yet.)
"""

from __future__ import annotations

import logging

from aiohttp import web

from hs.api.base import Handler, HandlerResult, Route, get_hs, get_requester
from hs.api.params import (
    MAX_OFFSET,
    path_room_id,
    query_bool,
    query_enum,
    query_int,
    query_limit,
    query_required_int,
)
from hs.db.stores.media_admin import USER_MEDIA_ORDERS
from hs.errors import bad_request, forbidden, invalid_param, not_found
from hs.media.admin import MediaAdmin, check_local

logger = logging.getLogger(__name__)

ADMIN = "/_synapse/admin/v1"
MEDIA_GROUP = "media"
MAX_ID_LENGTH = 255
MAX_LIMIT = 1000
# Synapse refuses a `before_ts` below this: a timestamp in seconds rather than milliseconds.
MIN_BEFORE_TS = 30_000_000_000


async def _admin(request: web.Request) -> tuple[MediaAdmin, str]:
    """The media admin service and the requesting admin's user ID (401 / 403 otherwise)."""
    hs = get_hs(request)
    requester = await get_requester(request)
    if not await hs.user_store.is_admin(requester.user_id):
        raise forbidden("You are not a server admin")
    return MediaAdmin(hs), requester.user_id


def _part(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise invalid_param(f"Invalid {name}")
    return value


def _before_ts(request: web.Request) -> int:
    before_ts = query_required_int(request, "before_ts", minimum=0)
    if before_ts < MIN_BEFORE_TS:
        raise invalid_param("Query parameter before_ts you provided is from the year 1970. "
                            "Double check that you are providing a timestamp in milliseconds.")
    return before_ts


async def _local_user(request: web.Request, admin: MediaAdmin) -> str:
    """The path's local, existing user (400 for another server's, 404 "Unknown user")."""
    user_id = _part(request, "userId")
    localpart, sep, domain = user_id.partition(":")
    if not user_id.startswith("@") or not sep or len(localpart) < 2:
        raise invalid_param("Invalid user ID")
    if domain != admin.server_name:
        raise bad_request("Can only look up local users")
    if await admin.hs.user_store.get_user(user_id) is None:
        raise not_found("Unknown user")
    return user_id


# -- reading -------------------------------------------------------------------------------------------------
async def room_media(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    room_id = path_room_id(request)
    logger.info("admin %s lists the media of room %s", by, room_id)
    local, remote = await admin.room_media(room_id)
    return 200, {"local": local, "remote": remote}


async def media_info(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    server_name, media_id = _part(request, "serverName"), _part(request, "mediaId")
    logger.info("admin %s queries media %s/%s", by, server_name, media_id)
    return 200, {"media_info": await admin.media_info(server_name, media_id)}


def _user_media_page(request: web.Request) -> tuple[int, int, str, bool]:
    """(`from`, `limit`, `order_by`, newest-first). With neither `order_by` nor `dir`, newest media
    first (Synapse's default, kept for its older clients); else `created_ts` and `f` by default."""
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, MAX_LIMIT, minimum=0)
    order_by = query_enum(request, "order_by", USER_MEDIA_ORDERS)
    direction = query_enum(request, "dir", ("f", "b"))
    if order_by is None and direction is None:
        return offset, limit, "created_ts", True
    return offset, limit, order_by or "created_ts", direction == "b"


async def user_media(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    user_id = await _local_user(request, admin)
    offset, limit, order_by, descending = _user_media_page(request)
    logger.info("admin %s lists the media of %s", by, user_id)
    media, total = await admin.user_media(user_id, offset, limit, order_by, descending)
    page: dict[str, object] = {"media": media, "total": total}
    if offset + limit < total:
        page["next_token"] = offset + len(media)
    return 200, page


# -- quarantine and protection ---------------------------------------------------------------------------
async def quarantine_media(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    server_name, media_id = _part(request, "serverName"), _part(request, "mediaId")
    n = await admin.quarantine(server_name, media_id, by)
    logger.info("admin %s quarantined media %s/%s (%d rows)", by, server_name, media_id, n)
    return 200, {}


async def unquarantine_media(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    server_name, media_id = _part(request, "serverName"), _part(request, "mediaId")
    n = await admin.quarantine(server_name, media_id, None)
    logger.info("admin %s released media %s/%s from quarantine (%d rows)", by, server_name, media_id, n)
    return 200, {}


async def quarantine_room(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    room_id = path_room_id(request)
    n = await admin.quarantine_room(room_id, by)
    logger.info("admin %s quarantined the media of room %s: %d", by, room_id, n)
    return 200, {"num_quarantined": n}


async def quarantine_user(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    user_id = _part(request, "userId")
    n = await admin.quarantine_user(user_id, by)
    logger.info("admin %s quarantined the media of %s: %d", by, user_id, n)
    return 200, {"num_quarantined": n}


async def protect(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    media_id = _part(request, "mediaId")
    logger.info("admin %s protects media %s", by, media_id)
    await admin.protect(media_id, True)
    return 200, {}


async def unprotect(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    media_id = _part(request, "mediaId")
    logger.info("admin %s unprotects media %s", by, media_id)
    await admin.protect(media_id, False)
    return 200, {}


# -- deleting ----------------------------------------------------------------------------------------------
async def delete_media(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    server_name, media_id = _part(request, "serverName"), _part(request, "mediaId")
    check_local(admin, server_name)
    if await admin.store.local_row(media_id) is None:
        raise not_found("Unknown media")
    logger.info("admin %s deletes local media %s", by, media_id)
    deleted = await admin.delete_local_media([media_id])
    return 200, {"deleted_media": deleted, "total": len(deleted)}


async def delete_by_date_size(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    before_ts = _before_ts(request)
    size_gt = query_int(request, "size_gt", 0)
    keep_profiles = query_bool(request, "keep_profiles", True)
    server_name = request.match_info.get("serverName")
    if server_name is not None:
        check_local(admin, server_name)
    logger.info("admin %s deletes local media last used before %d, larger than %d bytes, keep profiles: %s",
                by, before_ts, size_gt, keep_profiles)
    deleted = await admin.delete_old_local_media(before_ts, size_gt, keep_profiles=keep_profiles)
    return 200, {"deleted_media": deleted, "total": len(deleted)}


async def delete_user_media(request: web.Request) -> HandlerResult:
    """Deletes the page of the user's media the same parameters would list (Synapse's behaviour)."""
    admin, by = await _admin(request)
    user_id = await _local_user(request, admin)
    offset, limit, order_by, descending = _user_media_page(request)
    media, _ = await admin.user_media(user_id, offset, limit, order_by, descending)
    logger.info("admin %s deletes %d media of %s", by, len(media), user_id)
    deleted = await admin.delete_local_media([m["media_id"] for m in media])
    return 200, {"deleted_media": deleted, "total": len(deleted)}


async def purge_media_cache(request: web.Request) -> HandlerResult:
    admin, by = await _admin(request)
    before_ts = _before_ts(request)
    logger.info("admin %s purges remote media not accessed since %d", by, before_ts)
    return 200, {"deleted": await admin.delete_old_remote_media(before_ts)}


def _route(method: str, path: str, handler: Handler) -> Route:
    return Route(method, ADMIN + path, handler, MEDIA_GROUP, prefixes=(), resource="media")


# Protect/unprotect before the legacy /media/{serverName}/delete, which has their shape.
ROUTES: list[Route] = [
    _route("GET", "/room/{roomId}/media", room_media),
    _route("POST", "/room/{roomId}/media/quarantine", quarantine_room),
    _route("POST", "/quarantine_media/{roomId}", quarantine_room),
    _route("POST", "/user/{userId}/media/quarantine", quarantine_user),
    _route("POST", "/media/quarantine/{serverName}/{mediaId}", quarantine_media),
    _route("POST", "/media/unquarantine/{serverName}/{mediaId}", unquarantine_media),
    _route("POST", "/media/protect/{mediaId}", protect),
    _route("POST", "/media/unprotect/{mediaId}", unprotect),
    _route("POST", "/media/delete", delete_by_date_size),
    _route("POST", "/media/{serverName}/delete", delete_by_date_size),
    _route("GET", "/media/{serverName}/{mediaId}", media_info),
    _route("DELETE", "/media/{serverName}/{mediaId}", delete_media),
    _route("GET", "/users/{userId}/media", user_media),
    _route("DELETE", "/users/{userId}/media", delete_user_media),
    _route("POST", "/purge_media_cache", purge_media_cache),
]
