"""POST /rooms/{roomId}/upgrade (the logic is in hs/services/upgrade.py)."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import CLIENT_V3_V1, HandlerResult, Route, get_hs, get_requester, parse_json
from hs.errors import missing_param


async def upgrade_room(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    if "new_version" not in body:
        raise missing_param("Missing 'new_version'")
    new_room = await hs.room_upgrader.upgrade(requester, request.match_info["roomId"], body["new_version"],
                                              body.get("additional_creators"))
    return 200, {"replacement_room": new_room}


ROUTES: list[Route] = [
    Route("POST", "/rooms/{roomId}/upgrade", upgrade_room, "main", prefixes=CLIENT_V3_V1),
]
