"""Profiles: GET, PUT and DELETE of the display name and avatar URL (hs/services/profile.py keeps
them and carries them into the user's room memberships)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.errors import missing_param
from hs.services.profile import FIELDS


async def _profile(request: web.Request) -> dict[str, Any]:
    """The path user's stored profile (404 if none), when the requester may see profiles."""
    hs = get_hs(request)
    if hs.config.require_auth_for_profile_requests:
        await get_requester(request)
    profile: dict[str, Any] = await hs.profiles.get(request.match_info["userId"])
    return profile


async def get_profile(request: web.Request) -> HandlerResult:
    profile = await _profile(request)
    return 200, {k: profile[k] for k in FIELDS if profile.get(k) is not None}


def _field_handlers(field: str) -> tuple[Any, Any, Any]:
    async def get_field(request: web.Request) -> HandlerResult:
        profile = await _profile(request)
        return 200, {field: profile.get(field)}

    async def set_field(value: Any, request: web.Request) -> HandlerResult:
        hs = get_hs(request)
        requester = await get_requester(request)
        await hs.profiles.set_field(requester.user_id, request.match_info["userId"], field, value)
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
