"""PUT /sendToDevice/{eventType}/{txnId}: send-to-device messages (client-server spec, "Send-to-Device messaging")."""

from __future__ import annotations

from aiohttp import web

from hs.api.base import HandlerResult, Route, get_hs, get_requester, parse_json


async def send_to_device(request: web.Request) -> HandlerResult:
    hs = get_hs(request)
    requester = await get_requester(request)
    body = await parse_json(request)
    await hs.e2ee.send_to_device(requester.user_id, requester.device_id, request.match_info["eventType"],
                                 request.match_info["txnId"], body)
    return 200, {}


ROUTES: list[Route] = [
    Route("PUT", "/sendToDevice/{eventType}/{txnId}", send_to_device, "to_device"),
]
