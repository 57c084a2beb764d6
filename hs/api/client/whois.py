"""GET /admin/whois/{userId}: a user's devices and where they were last seen (admins, or the user)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, Route, get_hs, get_requester
from hs.errors import forbidden, invalid_param, not_found


async def whois(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    user_id = request.match_info["userId"]
    if user_id != requester.user_id and not await hs.user_store.is_admin(requester.user_id):
        raise forbidden("You are not a server admin")
    if not user_id.endswith(":" + hs.server_name):
        raise invalid_param("The user is not on this server")
    if await hs.user_store.get_user(user_id) is None:
        raise not_found("Unknown user")
    await hs.auth.sightings_stored()
    devices: dict[str, Any] = {}
    for d in await hs.user_store.get_device_sessions(user_id):
        connection = {k: v for k, v in (("ip", d.get("last_seen_ip")), ("last_seen", d.get("last_seen_ts")),
                                        ("user_agent", d.get("last_seen_user_agent"))) if v is not None}
        devices[d["device_id"]] = {"sessions": [{"connections": [connection] if connection else []}]}
    return 200, {"user_id": user_id, "devices": devices}


ROUTES: list[Route] = [
    Route("GET", "/admin/whois/{userId}", whois, "main", prefixes=CLIENT_V3_V1),
]
