"""Profiles: display name and avatar URL, and their propagation into the user's room memberships."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, JsonDict, Route, get_hs, parse_json
from hs.errors import forbidden, invalid_param, missing_param, not_found

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

MAX_DISPLAYNAME_LEN = 256
MAX_AVATAR_URL_LEN = 1000
FIELDS = ("displayname", "avatar_url")


async def _check_access(hs: HomeServer, request: web.Request) -> None:
    if hs.config.require_auth_for_profile_requests:
        await hs.auth.requester(request)


async def _load_profile(hs: HomeServer, user_id: str) -> dict[str, Any]:
    """The stored profile of a local user, or 404."""
    profile = None
    if user_id.startswith("@") and user_id.endswith(":" + hs.server_name):
        profile = await hs.user_store.get_profile(user_id)
    if profile is None:
        raise not_found("Profile was not found")
    return profile


async def get_profile(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    await _check_access(hs, request)
    profile = await _load_profile(hs, request.match_info["userId"])
    return 200, {k: profile[k] for k in FIELDS if profile.get(k) is not None}


def _validate(field: str, value: Any) -> str | None:
    """The value to store (None clears the field), or M_INVALID_PARAM."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid_param(f"'{field}' must be a string")
    if field == "displayname":
        if len(value) > MAX_DISPLAYNAME_LEN:
            raise invalid_param(f"Displayname is too long (max {MAX_DISPLAYNAME_LEN})")
    else:
        if len(value) > MAX_AVATAR_URL_LEN:
            raise invalid_param(f"Avatar URL is too long (max {MAX_AVATAR_URL_LEN})")
        server, _, media_id = value.removeprefix("mxc://").partition("/")
        if not value.startswith("mxc://") or not server or not media_id:
            raise invalid_param("avatar_url must be an mxc:// URI")
    return value


async def propagate_profile(hs: HomeServer, user_id: str) -> None:
    """Send an updated m.room.member join event into every room the user is joined to.

    A failure in one room (e.g. the user may not change their membership there) is logged and the
    other rooms are still updated, as Synapse does.
    """
    profile = await hs.user_store.get_profile(user_id) or {}
    rooms = await hs.event_store.get_rooms_for_user(user_id, ("join",))
    for room_id in rooms:
        try:
            current = await hs.event_store.get_current_state_event(room_id, "m.room.member", user_id)
            if current is None or current.content.get("membership") != "join":
                continue
            content: JsonDict = dict(current.content)
            for field in FIELDS:
                if profile.get(field) is None:
                    content.pop(field, None)
                else:
                    content[field] = profile[field]
            if content == current.content:
                continue
            await hs.event_sender.send(room_id, user_id, "m.room.member", content, state_key=user_id)
        except Exception:
            logger.warning("could not update %s's membership in %s with new profile", user_id, room_id,
                           exc_info=True)


def _field_handlers(field: str) -> tuple[Any, Any, Any]:
    async def get_field(request: web.Request) -> HandlerResult:
        hs = get_hs(request)
        await _check_access(hs, request)
        profile = await _load_profile(hs, request.match_info["userId"])
        return 200, {field: profile.get(field)}

    async def set_field(value: Any, request: web.Request) -> HandlerResult:
        hs = get_hs(request)
        requester = await hs.auth.requester(request)
        user_id = request.match_info["userId"]
        if user_id != requester.user_id:
            raise forbidden(f"Cannot set another user's {field}")
        await _load_profile(hs, user_id)
        new_value = _validate(field, value)
        await hs.user_store.set_profile_field(user_id, field, new_value)
        await propagate_profile(hs, user_id)
        return 200, {}

    async def put_field(request: web.Request) -> HandlerResult:
        body = await parse_json(request)
        if field not in body:
            raise missing_param(f"Missing '{field}'")
        return await set_field(body[field], request)

    async def delete_field(request: web.Request) -> HandlerResult:
        return await set_field(None, request)

    get_field.__name__ = f"get_{field}"
    put_field.__name__ = f"put_{field}"
    delete_field.__name__ = f"delete_{field}"
    return get_field, put_field, delete_field


ROUTES: list[Route] = [Route("GET", "/profile/{userId}", get_profile, "event_sending", prefixes=CLIENT_V3_V1)]
for _field in FIELDS:
    _get, _put, _delete = _field_handlers(_field)
    ROUTES += [
        Route("GET", f"/profile/{{userId}}/{_field}", _get, "event_sending", prefixes=CLIENT_V3_V1),
        Route("PUT", f"/profile/{{userId}}/{_field}", _put, "event_sending", prefixes=CLIENT_V3_V1),
        Route("DELETE", f"/profile/{{userId}}/{_field}", _delete, "event_sending", prefixes=CLIENT_V3_V1),
    ]
