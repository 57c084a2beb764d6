"""Calls to another instance's `replication` resource, for writes owned by another stream writer.

Every call carries `Authorization: Bearer <worker_replication_secret>` and, for writes, a transaction
ID so a retried call is applied once. Replies carry the writer's stream position; the caller waits
until its own view of the stream has reached it before answering its client (read-your-writes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from hs.errors import ROOM_ID_TAKEN, MatrixError, internal_error, unreachable

if TYPE_CHECKING:
    from hs.db.stores.rooms import NewRoom
    from hs.events.event import Event
    from hs.server import HomeServer
    from hs.services.new_room import InitialEvent

logger = logging.getLogger(__name__)
REPLICATION_PREFIX = "/_hs/replication"
FORWARDED_AUTH_HEADER = "X-Hs-Forwarded-Authorization"
POSITIONS_HEADER = "X-Hs-Stream-Positions"
RETRIES = 5
# How long a read-your-writes wait trusts replication messages before reading the writers' durably
# recorded positions itself (Redis may be away: the writes must still be answered).
POSITIONS_FALLBACK_SECONDS = 0.5


class ReplicationClient:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._session: aiohttp.ClientSession | None = None

    def _base(self, instance: str) -> str:
        loc = self.hs.config.instance_map.get(instance)
        if loc is None:
            raise internal_error(f"instance {instance!r} is not in instance_map")
        scheme = "https" if loc.tls else "http"
        return f"{scheme}://{loc.host}:{loc.port}"

    def _headers(self) -> dict[str, str]:
        secret = self.hs.config.get_replication_secret()
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, instance: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a replication call, retrying connection failures (the writer may be restarting)."""
        body = {**body, "txn_id": body.get("txn_id") or uuid.uuid4().hex}
        url = f"{self._base(instance)}{REPLICATION_PREFIX}/{name}"
        last: Exception | None = None
        for attempt in range(RETRIES):
            try:
                s = await self.session()
                async with s.post(url, data=orjson.dumps(body), headers=self._headers()) as r:
                    data = await r.json(content_type=None)
                    if r.status != 200:
                        raise MatrixError(r.status, data.get("errcode", "M_UNKNOWN"), data.get("error", ""))
                    return data  # type: ignore[no-any-return]
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                last = e
                if attempt + 1 == RETRIES:
                    break  # answer at once: no pause after the last try
                logger.warning("replication call %s to %s failed (%s); retrying", name, instance, e)
                await asyncio.sleep(0.2 * (2**attempt))
        raise unreachable(f"{instance} is unreachable: {last}")

    async def wait_for_stream(self, stream: str, position: int, writer: str | None = None,
                              timeout: float = 10.0) -> None:
        """Read-your-writes: return once this process has seen `writer`'s rows of `stream` persisted
        up to `position` (any writer's, for the minimum, when none is named).

        Replication messages normally bring the position within a millisecond. Should they not (Redis
        restarting), the writers' durably recorded positions are read from the database instead, so a
        write is answered without waiting for Redis."""
        notifier = self.hs.notifier
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wait = POSITIONS_FALLBACK_SECONDS
        while not await notifier.wait_for_position(stream, position, min(wait, timeout), writer):
            if loop.time() >= deadline:
                logger.warning("timed out waiting for %s to reach %d (writer %s)", stream, position, writer)
                return
            logger.info("%s position %d (writer %s) not announced yet; reading positions from the database",
                        stream, position, writer)
            await self.hs.catch_up(stream)
            timeout = max(0.0, deadline - loop.time())

    # -- events ------------------------------------------------------------------------------------------
    async def send_event(self, room_id: str, sender: str, etype: str, content: dict[str, Any],
                         state_key: str | None, txn: tuple[str, str, str] | None, redacts: str | None,
                         co_sign_invite: bool = False) -> Event:
        """Have the room's writer build and persist an event. `co_sign_invite`: it is an invite of
        another server's user, whom the writer asks to co-sign it first (FederationMembership)."""
        from hs.services.auth import massaged_ts

        writer = self.hs.events_stream.writer_for_room(room_id)
        body = {"room_id": room_id, "sender": sender, "type": etype, "content": content, "state_key": state_key,
                "txn": list(txn) if txn else None, "redacts": redacts, "co_sign_invite": co_sign_invite,
                "origin_server_ts": massaged_ts()}  # an application service's `ts`, if it gave one
        if txn is not None:
            body["txn_id"] = "send:" + ":".join(txn) + ":" + room_id
        reply = await self.call(writer, "send_event", body)
        await self.wait_for_stream("events", int(reply["stream_ordering"]), writer)
        event = await self.hs.event_store.get_event(reply["event_id"])
        if event is None:
            raise internal_error("event persisted by the writer is not visible")
        return event

    async def create_room(self, create: Event, initial: list[InitialEvent], room: NewRoom) -> None:
        """Have the room's persister build and persist a new room (`EventSender.persist_new_room`); the
        create event, built here, names it. Raises RoomIdTaken as the persister does."""
        from hs.db.stores.rooms import RoomIdTaken

        writer = self.hs.events_stream.writer_for_room(create.room_id)
        body = {"pdu": create.pdu, "room_version": create.room_version.identifier,
                "events": [e.to_json() for e in initial], "room": room.to_json()}
        try:
            reply = await self.call(writer, "create_room", body)
        except MatrixError as e:
            if e.errcode == ROOM_ID_TAKEN:
                raise RoomIdTaken(create.room_id) from None
            raise
        await self.wait_for_stream("events", int(reply["stream_ordering"]), writer)

    # -- generic forwarding of client requests to a stream's writer ------------------------------------------
    async def forward(self, instance: str, method: str, path_qs: str, body: bytes,
                      authorization: str | None) -> tuple[int, bytes, dict[str, int]]:
        url = f"{self._base(instance)}{REPLICATION_PREFIX}/client{path_qs}"
        headers = self._headers()
        headers["Content-Type"] = "application/json"
        if authorization:
            headers[FORWARDED_AUTH_HEADER] = authorization
        for attempt in range(RETRIES):
            try:
                s = await self.session()
                async with s.request(method, url, data=body, headers=headers) as r:
                    positions = orjson.loads(r.headers.get(POSITIONS_HEADER, "{}"))
                    return r.status, await r.read(), positions
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if attempt + 1 == RETRIES:
                    break  # answer at once: no pause after the last try
                logger.warning("forwarding %s %s to %s failed (%s); retrying", method, path_qs, instance, e)
                await asyncio.sleep(0.2 * (2**attempt))
        raise unreachable(f"{instance} is unreachable")
