"""Receipts and read markers: POST /rooms/{roomId}/receipt/{receiptType}/{eventId} and
POST /rooms/{roomId}/read_markers. The logic lives in `hs.services.receipts.ReceiptService`."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json
from hs.errors import invalid_param

GROUP = "receipts"


async def post_receipt(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    room_id = request.match_info["roomId"]
    event_id = request.match_info["eventId"]
    receipt_type = request.match_info["receiptType"]
    body = await parse_json(request, allow_empty=True)
    thread_id = None
    if "thread_id" in body:
        thread_id = body["thread_id"]
        if not isinstance(thread_id, str) or not thread_id:
            raise invalid_param("thread_id field must be a non-empty string")
    await hs.receipts.send_receipt(requester.user_id, room_id, receipt_type, event_id, thread_id)
    return 200, {}


async def post_read_markers(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    await hs.receipts.set_read_markers(requester.user_id, request.match_info["roomId"], body)
    return 200, {}


ROUTES: list[Route] = [
    Route("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", post_receipt, GROUP),
    Route("POST", "/rooms/{roomId}/read_markers", post_read_markers, GROUP),
]
