"""Inbound transactions (`PUT /_matrix/federation/v1/send/{txnId}`): PDUs and EDUs from one server.

One transaction per origin at a time (the spec asks servers to send one at a time; this enforces it
against a server that does not, so that its PDUs are taken in order), across a cluster's federation
readers too (a PostgreSQL advisory lock per origin), idempotent by (origin, txnId):
a retried transaction gets the first answer again without being processed twice. Within a
transaction PDUs are taken by depth, parents before the children that cite them.

On a cluster any generic worker serving the `federation` resource takes /send: PDUs of rooms another
instance persists are handed to that room's writer (hs/replication/federation_calls.py), which takes
them as here and answers their results; EDUs of a stream another instance writes go to its writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hs.db.stores.inbound_transactions import InboundTransactionStore
from hs.errors import bad_json, unavailable
from hs.events.auth import get_domain
from hs.events.event import Event, JsonDict
from hs.events.hashing import compute_event_id
from hs.events.room_versions import EventFormat, RoomVersion
from hs.federation.edus import edu_writer
from hs.federation.event_handler import PduRejected, parse_pdu
from hs.util import KeyedLocks, LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
EduHandler = Callable[[str, JsonDict], Awaitable[None]]


class TransactionHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._locks = KeyedLocks()
        self._answered: LruCache[tuple[str, str], JsonDict] = LruCache(10_000, name="federation.transactions.self._answered")
        self.store = InboundTransactionStore(hs.db)
        # EDU type -> handler(origin, content): see hs/federation/edus.py.
        self.edu_handlers: dict[str, EduHandler] = {}
        from hs.federation.edus import register_edu_handlers

        register_edu_handlers(hs, self)

    async def on_transaction(self, origin: str, txn_id: str, body: Any) -> JsonDict:
        if not isinstance(body, dict):
            raise bad_json("The transaction must be an object")
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise bad_json("pdus and edus must be lists")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise bad_json(f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
        body_origin = body.get("origin")
        if body_origin is not None and body_origin != origin:
            raise bad_json("The transaction's origin is not the server that signed the request")
        # One at a time per origin: in this process, and across the cluster's federation readers (a
        # retried or reordered transaction may reach another worker than the one still processing).
        async with self._locks.lock(origin), self.store.origin_lock(origin):
            done = self._answered.get((origin, txn_id))
            if done is None:
                done = await self.store.get_response(origin, txn_id)  # answered before a restart
            if done is not None:
                return done
            await self.hs.federation_outbox.wake_destination(origin)
            results = await self._pdus_by_writer(origin, pdus)
            for edu in edus:
                await self._one_edu(origin, edu)
            answer: JsonDict = {"pdus": results}
            self._answered.set((origin, txn_id), answer)
            await self.store.set_response(origin, txn_id, answer)
            return answer

    async def _pdus_by_writer(self, origin: str, pdus: list[Any]) -> JsonDict:
        """The per-PDU results of a transaction's PDUs: those of rooms this process persists are taken
        here; the others are handed, per room writer, to the writer (over replication), which takes
        them the same way. Each group keeps the transaction's order."""
        mine: list[Any] = []
        theirs: dict[str, list[Any]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
            if isinstance(room_id, str) and not self.hs.events_stream.is_writer_for_room(room_id):
                theirs.setdefault(self.hs.events_stream.writer_for_room(room_id), []).append(pdu)
            else:
                mine.append(pdu)
        if not theirs:
            return await self.take_pdus(origin, mine)
        from hs.replication.federation_calls import forward_pdus

        parts = await asyncio.gather(self.take_pdus(origin, mine),
                                     *(forward_pdus(self.hs, writer, origin, group)
                                       for writer, group in theirs.items()),
                                     return_exceptions=True)  # each group runs to its end
        results: JsonDict = {}
        failed: list[BaseException] = []
        for part in parts:
            if isinstance(part, BaseException):
                failed.append(part)
            else:
                results.update(part)
        if failed:
            # A writer could not take its PDUs: no answer is stored, so the sending server retries the
            # whole transaction, and what was taken meanwhile is known then (settled, answered alike).
            logger.warning("PDUs from %s could not be handed to their room's writer: %s", origin, failed[0])
            raise unavailable(f"some of the transaction's rooms cannot take events now: {failed[0]}")
        return results

    async def take_pdus(self, origin: str, pdus: list[Any]) -> JsonDict:
        """Take PDUs of rooms this process persists (a transaction's, or those a federation reader
        forwarded here): the per-PDU results of /send. Accepted PDUs are queued and commit together;
        their results wait for the commit."""
        results: JsonDict = {}
        queued: list[tuple[str | None, asyncio.Future[Event]]] = []
        for pdu in sorted(pdus, key=_depth):  # parents first (the sort is stable)
            deferred: list[asyncio.Future[Event]] = []
            event_id, error = await self._one_pdu(origin, pdu, deferred)
            queued.extend((event_id, f) for f in deferred)
            if event_id is not None:
                results[event_id] = {"error": error} if error else {}
        for event_id, future in queued:
            try:
                await asyncio.shield(future)
            except Exception as e:
                logger.warning("PDU %s from %s failed to persist: %s", event_id, origin, e)
                if event_id is not None:
                    results[event_id] = {"error": "failed to persist"}
        return results

    async def _one_pdu(self, origin: str, pdu: Any,
                       deferred: list[asyncio.Future[Event]]) -> tuple[str | None, str | None]:
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        rv = await self.hs.room_store.get_room_version(room_id) if isinstance(room_id, str) else None
        event_id: str | None = pdu.get("event_id") if isinstance(pdu, dict) and isinstance(pdu.get("event_id"), str) else None
        parsed: Event | None = None
        if rv is not None:
            try:
                parsed = parse_pdu(pdu, rv)
                event_id = parsed.event_id
            except PduRejected as e:
                event_id = event_id or _reference_event_id(pdu, rv)
                logger.info("PDU %s from %s dropped: %s", event_id, origin, e)
                return event_id, str(e)
        sender = pdu.get("sender") if isinstance(pdu, dict) else None
        if (isinstance(sender, str) and get_domain(sender) != origin
                and not (isinstance(pdu, dict) and pdu.get("type") == "m.room.member")):
            # Servers send their own events; only membership events (joins relayed by the resident
            # server that took them) come from elsewhere, and signatures still decide.
            logger.warning("PDU %s from %s was sent by %s: dropped", event_id, origin, sender)
            return event_id, f"{origin} is not the origin of this event"
        try:
            await self.hs.federation_event_handler.on_receive_pdu(origin, pdu, deferred, parsed)
        except PduRejected as e:
            logger.info("PDU %s from %s: %s", event_id, origin, e)
            return event_id, str(e)
        except Exception as e:
            logger.exception("PDU %s from %s failed", event_id, origin)
            return event_id, f"internal error: {type(e).__name__}"
        return event_id, None

    async def _one_edu(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
            return
        content = edu.get("content")
        if edu["edu_type"] not in self.edu_handlers or not isinstance(content, dict):
            return
        writer = edu_writer(self.hs, edu["edu_type"])
        if writer is not None:
            from hs.replication.federation_calls import forward_edu

            await forward_edu(self.hs, writer, origin, edu["edu_type"], content)
            return
        await self.take_edu(origin, edu["edu_type"], content)

    async def take_edu(self, origin: str, edu_type: str, content: JsonDict) -> None:
        """Run an EDU's handler here (this process writes its stream, or needs to write none)."""
        handler = self.edu_handlers.get(edu_type)
        if handler is None:
            return
        try:
            await handler(origin, content)
        except Exception:
            logger.exception("EDU %s from %s failed", edu_type, origin)


def _reference_event_id(pdu: Any, rv: RoomVersion) -> str | None:
    """The event ID of a PDU that is not a valid event but can still be hashed (room v3+), so that the
    sender learns which of its PDUs was dropped; None when not even that works."""
    if not isinstance(pdu, dict) or rv.event_format == EventFormat.V1:
        return None
    try:
        return compute_event_id(pdu, rv)
    except Exception:  # not canonical JSON, not an object where one is due
        return None


def _depth(pdu: Any) -> int:
    """A PDU's depth, for taking a transaction's PDUs parents first (a child has a greater depth than
    its prev events); a PDU without a valid one keeps its place among those of depth 0."""
    depth = pdu.get("depth") if isinstance(pdu, dict) else None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else 0
