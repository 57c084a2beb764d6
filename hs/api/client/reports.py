"""Reporting content: POST /rooms/{roomId}/report/{eventId}, /rooms/{roomId}/report and
/users/{userId}/report; admins list event reports at GET /_synapse/admin/v1/event_reports."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.api.params import MAX_OFFSET, query_enum, query_int, query_limit, query_str
from hs.errors import forbidden
from hs.services.reports import check_reason

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")


async def report_event(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    reason = check_reason(await parse_json(request, allow_empty=True), required=False)
    await hs.reports.report_event(requester.user_id, request.match_info["roomId"],
                                  request.match_info["eventId"], reason)
    return 200, {}


async def report_room(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    reason = check_reason(await parse_json(request), required=True)
    await hs.reports.report_room(requester.user_id, request.match_info["roomId"], reason)
    return 200, {}


async def report_user(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    reason = check_reason(await parse_json(request), required=True)
    await hs.reports.report_user(requester.user_id, request.match_info["userId"], reason)
    return 200, {}


async def list_event_reports(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    if not await hs.user_store.is_admin(requester.user_id):
        raise forbidden("You are not a server admin")
    offset = query_int(request, "from", 0, maximum=MAX_OFFSET)
    limit = query_limit(request, 100, 1000, minimum=0)
    direction = query_enum(request, "dir", ("b", "f"), "b")
    return 200, await hs.reports.list_event_reports(offset, limit, direction == "b", query_str(request, "room_id"),
                                                    query_str(request, "user_id"))


ROUTES: list[Route] = [
    Route("POST", "/rooms/{roomId}/report/{eventId}", report_event, "main", prefixes=PREFIXES),
    Route("POST", "/rooms/{roomId}/report", report_room, "main", prefixes=PREFIXES),
    Route("POST", "/users/{userId}/report", report_user, "main", prefixes=PREFIXES),
    Route("GET", "/_synapse/admin/v1/event_reports", list_event_reports, "main", prefixes=()),
]
