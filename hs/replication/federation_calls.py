"""Federation on a cluster, inbound side: what a federation reader (any generic worker serving the
`federation` resource) hands to the instance that must do it, over the replication resource.

- POST /_hs/replication/federation_pdus        a transaction's PDUs of rooms the callee persists:
                                               taken as /send takes them; answers the per-PDU results
- POST /_hs/replication/federation_edu         an EDU of a stream the callee writes: its handler runs
- POST /_hs/replication/federation_send_membership
                                               send_join / send_leave / send_knock of a room the callee
                                               persists: checked, recorded for relaying, persisted
- POST /_hs/replication/federation_invite      an invite of one of our users (co-signed, kept)
- POST /_hs/replication/federation_remote_membership
                                               a local user's join / knock / leave through other
                                               servers (make_*/send_*), persisted by the callee
- POST /_hs/replication/federation_backfill    older events of a room the callee persists

Each call carries a txn_id: a retried call (the connection dropped) is answered once, with the first
call's answer (still running: the retry waits for it). The PDU hand-over is idempotent anyway (events
already held are settled). Calls that persist answer the callee's position in the events stream, so
the caller waits until it sees its own write before answering (read-your-writes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hs.api.base import get_hs
from hs.errors import bad_json, bad_request
from hs.events.event import Event, JsonDict
from hs.replication.http_client import REPLICATION_PREFIX
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[tuple[int, Any]]]

# Answers by txn_id, and the calls still running (a retry joins the running call).
_answers: LruCache[str, JsonDict] = LruCache(10_000, name="replication.federation_calls.answers")
_running: dict[str, asyncio.Future[JsonDict]] = {}
# Fire-and-forget hand-overs (typing) still running: kept so they are not garbage-collected.
_background: set[asyncio.Task[None]] = set()


async def _body(request: web.Request) -> dict[str, Any]:
    from hs.replication.http_server import _body as parse

    return await parse(request)


async def _once(body: dict[str, Any], run: Callable[[], Awaitable[JsonDict]]) -> JsonDict:
    """`run()` once per txn_id: a retried call gets the first call's answer."""
    txn_id = body.get("txn_id")
    if not isinstance(txn_id, str):
        return await run()
    done = _answers.get(txn_id)
    if done is not None:
        return done
    running = _running.get(txn_id)
    if running is not None:
        return await asyncio.shield(running)
    future: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
    _running[txn_id] = future
    try:
        answer = await run()
    except BaseException as e:
        future.set_exception(e)
        future.exception()  # retrieved: a lone call leaves no "never retrieved" warning
        raise
    finally:
        _running.pop(txn_id, None)
    _answers.set(txn_id, answer)
    future.set_result(answer)
    return answer


def _position(hs: HomeServer) -> int:
    """This writer's position in the events stream: at or past every event it has persisted."""
    return hs.events_stream.writer_position(hs.instance_name)


def _require_writer(hs: HomeServer, room_id: Any) -> str:
    if not isinstance(room_id, str):
        raise bad_json("room_id must be a string")
    if not hs.events_stream.is_writer_for_room(room_id):
        raise bad_request(f"{hs.instance_name} does not write events for {room_id}")
    return room_id


# -- callee side ------------------------------------------------------------------------------------------
async def federation_pdus(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    origin, pdus = body.get("origin"), body.get("pdus")
    if not isinstance(origin, str) or not isinstance(pdus, list):
        raise bad_json("origin and pdus are required")
    # (A PDU of a room this instance does not write is refused by the event handler, per PDU.)
    results = await hs.federation_transactions.take_pdus(origin, pdus)
    return 200, {"pdus": results}


async def federation_edu(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    origin, edu_type, content = body.get("origin"), body.get("edu_type"), body.get("content")
    if not isinstance(origin, str) or not isinstance(edu_type, str) or not isinstance(content, dict):
        raise bad_json("origin, edu_type and content are required")
    await hs.federation_transactions.take_edu(origin, edu_type, content)
    return 200, {}


async def federation_send_membership(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    room_id = _require_writer(hs, body.get("room_id"))

    async def run() -> JsonDict:
        event = await hs.federation_membership.on_send_membership(
            str(body["origin"]), room_id, str(body["event_id"]), body.get("pdu"), str(body["membership"]))
        return {"event_id": event.event_id, "position": _position(hs)}

    return 200, await _once(body, run)


async def federation_invite(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    room_id = _require_writer(hs, body.get("room_id"))

    async def run() -> JsonDict:
        signed = await hs.federation_membership.on_invite(
            str(body["origin"]), room_id, str(body["event_id"]), body.get("pdu"), str(body["room_version"]),
            body.get("invite_room_state"))
        return {"event": signed, "position": _position(hs)}

    return 200, await _once(body, run)


async def federation_remote_membership(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    room_id = _require_writer(hs, body.get("room_id"))
    action, user_id = body.get("action"), body.get("user_id")
    servers, content = body.get("servers"), body.get("content")
    if action not in ("join", "knock", "leave") or not isinstance(user_id, str) or not isinstance(servers, list):
        raise bad_json("action, user_id and servers are required")
    content = content if isinstance(content, dict) else {}
    membership = hs.federation_membership

    async def run() -> JsonDict:
        event_id: str | None = None
        if action == "join":
            await membership.join_remote_room(user_id, room_id, servers, content)
        elif action == "knock":
            event_id = (await membership.knock_remote_room(user_id, room_id, servers, content)).event_id
        else:
            event_id = (await membership.leave_remote_room(user_id, room_id, servers, content)).event_id
        return {"event_id": event_id, "position": _position(hs)}

    return 200, await _once(body, run)


async def federation_backfill(request: web.Request) -> tuple[int, Any]:
    hs = get_hs(request)
    body = await _body(request)
    room_id = _require_writer(hs, body.get("room_id"))

    async def run() -> JsonDict:
        return {"event_ids": await hs.backfiller.backfill_here(room_id)}

    return 200, await _once(body, run)


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", f"{REPLICATION_PREFIX}/federation_pdus", federation_pdus),
    ("POST", f"{REPLICATION_PREFIX}/federation_edu", federation_edu),
    ("POST", f"{REPLICATION_PREFIX}/federation_send_membership", federation_send_membership),
    ("POST", f"{REPLICATION_PREFIX}/federation_invite", federation_invite),
    ("POST", f"{REPLICATION_PREFIX}/federation_remote_membership", federation_remote_membership),
    ("POST", f"{REPLICATION_PREFIX}/federation_backfill", federation_backfill),
]


# -- caller side ------------------------------------------------------------------------------------------
async def _wait_for(hs: HomeServer, writer: str, reply: JsonDict) -> None:
    """Read-your-writes: until this process has seen `writer`'s events up to the reply's position."""
    position = reply.get("position")
    if isinstance(position, int):
        await hs.replication_client.wait_for_stream("events", position, writer)


async def forward_pdus(hs: HomeServer, writer: str, origin: str, pdus: list[Any]) -> JsonDict:
    """A transaction's PDUs of rooms `writer` persists, taken there; their per-PDU results."""
    reply = await hs.replication_client.call(writer, "federation_pdus", {"origin": origin, "pdus": pdus})
    results = reply.get("pdus")
    return results if isinstance(results, dict) else {}


async def forward_edu(hs: HomeServer, writer: str, origin: str, edu_type: str, content: JsonDict) -> None:
    """An EDU of a stream `writer` writes, handled there. Those that must not be lost (receipts,
    to-device) are awaited, and a failure raises, so /send is not answered and the EDU comes again;
    typing is handed over in the background."""
    from hs.federation.edus import AWAITED_EDUS

    call = hs.replication_client.call(writer, "federation_edu",
                                      {"origin": origin, "edu_type": edu_type, "content": content})
    if edu_type in AWAITED_EDUS:
        await call
        return

    async def background() -> None:
        try:
            await call
        except Exception as e:
            logger.info("%s from %s not handed to %s: %s", edu_type, origin, writer, e)

    task = asyncio.get_running_loop().create_task(background())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def forward_send_membership(hs: HomeServer, origin: str, room_id: str, event_id: str, pdu: Any,
                                  membership: str) -> Event:
    """send_join / send_leave / send_knock taken by the room's writer; the event, once seen here."""
    writer = hs.events_stream.writer_for_room(room_id)
    reply = await hs.replication_client.call(writer, "federation_send_membership", {
        "origin": origin, "room_id": room_id, "event_id": event_id, "pdu": pdu, "membership": membership})
    await _wait_for(hs, writer, reply)
    return await _event(hs, str(reply["event_id"]))


async def forward_invite(hs: HomeServer, origin: str, room_id: str, event_id: str, pdu: Any,
                         room_version: str, invite_room_state: Any) -> JsonDict:
    """An invite of one of our users, checked, co-signed and kept by the room's writer."""
    writer = hs.events_stream.writer_for_room(room_id)
    reply = await hs.replication_client.call(writer, "federation_invite", {
        "origin": origin, "room_id": room_id, "event_id": event_id, "pdu": pdu, "room_version": room_version,
        "invite_room_state": invite_room_state})
    await _wait_for(hs, writer, reply)
    signed = reply.get("event")
    if not isinstance(signed, dict):
        raise bad_request("the room's writer answered no invite")
    return signed


async def remote_membership(hs: HomeServer, action: str, user_id: str, room_id: str, servers: list[str],
                            content: JsonDict | None) -> Event | None:
    """A local user's join / knock / leave of a room on other servers, done by the room's writer; the
    event (None for a join) once seen here."""
    writer = hs.events_stream.writer_for_room(room_id)
    reply = await hs.replication_client.call(writer, "federation_remote_membership", {
        "action": action, "user_id": user_id, "room_id": room_id, "servers": servers, "content": content or {}})
    await _wait_for(hs, writer, reply)
    event_id = reply.get("event_id")
    return await _event(hs, event_id) if isinstance(event_id, str) else None


async def backfill(hs: HomeServer, room_id: str) -> int:
    """Older events of a remote room, fetched and stored by the room's writer; how many. What this
    process holds of them (outliers until now) is dropped at once: the writer's invalidation for
    every process comes through Redis, maybe after this caller reads them."""
    reply = await hs.replication_client.call(hs.events_stream.writer_for_room(room_id), "federation_backfill",
                                             {"room_id": room_id})
    event_ids = reply.get("event_ids")
    stored = [e for e in event_ids if isinstance(e, str)] if isinstance(event_ids, list) else []
    for event_id in stored:
        hs.event_store.invalidate_event(event_id)
    return len(stored)


async def _event(hs: HomeServer, event_id: str) -> Event:
    event = await hs.event_store.get_event(event_id)
    if event is None:
        from hs.errors import internal_error

        raise internal_error(f"event {event_id} persisted by the room's writer is not visible here")
    return event
