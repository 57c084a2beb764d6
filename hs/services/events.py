"""Building, authorising and persisting local events: the write path of the events stream.

Everything that changes a room goes through `EventSender.send`, on the room's event persister, under a
per-room lock, so each room's DAG stays linear on this server: the new event's prev_events are the
room's forward extremity, its state before is the extremity's state after, and its auth events are
picked from that state by the room version's rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from hs.errors import MatrixError, forbidden, not_found
from hs.events.auth import AuthError, auth_types_for_event, check_auth_rules, get_user_power_level
from hs.events.event import Event, JsonDict, StateKey
from hs.events.hashing import add_content_hash, compute_content_hash
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from hs.events.signing import sign_event
from hs.events.validation import EventTooLargeError, check_event_size
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)
EVENTS_PERSISTED = Counter("hs_events_persisted_total", "Events persisted by this process")


class RoomLocks:
    """One asyncio lock per room, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def lock(self, room_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(room_id, (asyncio.Lock(), 0))
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[room_id]
            if users <= 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)


class EventSender:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.locks = RoomLocks()
        # The latest event of each room this writer persisted: the next event's prev_event. Only the
        # room's writer changes it (under the room lock), so the cache cannot go stale.
        self._heads: dict[str, list[Event]] = {}

    async def room_version(self, room_id: str) -> RoomVersion:
        vid = await self.hs.room_store.get_room_version_id(room_id)
        if vid is None:
            raise not_found(f"Unknown room {room_id}")
        return KNOWN_ROOM_VERSIONS[vid]

    async def send(self, room_id: str, sender: str, etype: str, content: JsonDict,
                   state_key: str | None = None, txn: tuple[str, str, str] | None = None,
                   redacts: str | None = None, room_version: RoomVersion | None = None) -> Event:
        """Create, authorise and persist one event; with `txn` (user, device, txn_id) it is idempotent."""
        if not self.hs.events_stream.is_writer_for_room(room_id):
            return await self.hs.replication_client.send_event(
                room_id, sender, etype, content, state_key, txn, redacts)
        async with self.locks.lock(room_id):
            if txn is not None:
                existing = await self.store.get_event_id_for_txn(txn[0], txn[1], room_id, txn[2])
                if existing is not None:
                    ev = await self.store.get_event(existing)
                    assert ev is not None
                    return ev
            rv = room_version or await self.room_version(room_id)
            event, group_before, state_before = await self._build(
                rv, room_id, sender, etype, content, state_key, redacts)
            if txn is not None:
                event.internal["txn_id"] = txn[2]
            await self._persist(event, group_before, state_before, txn)
            return event

    async def create_room_event(self, rv: RoomVersion, sender: str, content: JsonDict,
                                room_id: str | None) -> Event:
        """Build and persist the m.room.create event of a new room (v12: it defines the room ID)."""
        pdu: JsonDict = {
            "type": "m.room.create", "state_key": "", "sender": sender, "content": content,
            "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": now_ms(),
        }
        if not rv.room_id_from_create_event:
            assert room_id is not None
            pdu["room_id"] = room_id
        event = self._finish(rv, pdu)
        check_auth_rules(event, {})
        room_id = event.room_id
        await self.hs.room_store.store_room(room_id, rv.identifier, sender, False)
        if not self.hs.events_stream.is_writer_for_room(room_id):
            raise MatrixError(500, "M_UNKNOWN", "room created on the wrong writer")
        async with self.locks.lock(room_id):
            await self._persist(event, None, {}, None)
        return event

    # -- building --------------------------------------------------------------------------------------
    def _finish(self, rv: RoomVersion, pdu: JsonDict) -> Event:
        """Add origin, IDs (v1/v2), content hash and signature; wrap as an Event."""
        server = self.hs.server_name
        if not rv.updated_redaction_rules:
            pdu["origin"] = server
        if rv.event_format == EventFormat.V1:
            pdu["event_id"] = f"${random_string(18)}:{server}"
        pdu = add_content_hash(pdu)
        pdu = sign_event(pdu, server, self.hs.signing_key, rv)
        event = Event(pdu, rv)
        try:
            check_event_size(event.pdu)
        except EventTooLargeError as e:
            raise MatrixError(413, "M_TOO_LARGE", str(e)) from None
        return event

    async def _build(self, rv: RoomVersion, room_id: str, sender: str, etype: str, content: JsonDict,
                     state_key: str | None, redacts: str | None) -> tuple[Event, int | None, dict[StateKey, str]]:
        prevs = self._heads.get(room_id)
        if prevs is None:
            prev_ids = await self.store.get_forward_extremities(room_id)
            prevs = list((await self.store.get_events(prev_ids)).values())
        if not prevs:
            raise not_found(f"Unknown room {room_id}")
        depth = max(p.depth for p in prevs) + 1
        # Local rooms have one extremity; the state before the new event is the state after it.
        group_before = prevs[0].internal["state_group_after"]
        state_before = await self.store.get_state_group(group_before)
        auth_keys = auth_types_for_event(rv, etype, sender, state_key, content)
        auth_ids = [state_before[k] for k in sorted(auth_keys) if k in state_before]
        auth_events = await self.store.get_events(auth_ids + [state_before[("m.room.create", "")]])
        if rv.event_format == EventFormat.V1:
            prev_refs: list[Any] = [[p.event_id, {"sha256": compute_content_hash(p.pdu)}] for p in prevs]
            auth_refs: list[Any] = [[a, {"sha256": compute_content_hash(auth_events[a].pdu)}] for a in auth_ids]
        else:
            prev_refs, auth_refs = [p.event_id for p in prevs], auth_ids
        pdu: JsonDict = {
            "room_id": room_id, "sender": sender, "type": etype, "content": content, "depth": depth,
            "prev_events": prev_refs, "auth_events": auth_refs, "origin_server_ts": now_ms(),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            if rv.updated_redaction_rules:
                pdu["content"] = {**content, "redacts": redacts}
            else:
                pdu["redacts"] = redacts
        event = self._finish(rv, pdu)
        auth_map = {(e.type, e.state_key or ""): e for e in auth_events.values()}
        try:
            check_auth_rules(event, auth_map)
        except AuthError as e:
            raise forbidden(str(e)) from None
        if etype == "m.room.redaction" and redacts is not None:
            await self._check_redaction_allowed(event, redacts, auth_map)
        if state_key is not None and (etype, state_key) in state_before:
            prev = await self.store.get_event(state_before[(etype, state_key)])
            if prev is not None:
                event.pdu["unsigned"] = {"replaces_state": prev.event_id, "prev_content": prev.content,
                                         "prev_sender": prev.sender}
        return event, group_before, state_before

    async def _check_redaction_allowed(self, event: Event, redacts: str, auth_map: dict[StateKey, Event]) -> None:
        """From room v3 the auth rules defer redaction checks to the server that sees the target."""
        target = await self.store.get_event(redacts)
        if target is not None and target.room_id != event.room_id:
            raise not_found("Event not found")
        if target is not None and target.sender == event.sender:
            return
        pl = auth_map.get(("m.room.power_levels", ""))
        redact_level = int(pl.content.get("redact", 50)) if pl is not None else 50
        if get_user_power_level(event.sender, auth_map, event.room_version) < redact_level:
            raise forbidden("You don't have permission to redact this event")

    # -- persisting --------------------------------------------------------------------------------------
    async def _persist(self, event: Event, group_before: int | None, state_before: dict[StateKey, str],
                       txn: tuple[str, str, str] | None) -> None:
        stream = self.hs.events_stream
        assert stream.tracker is not None, "only an events writer persists events"
        group_after = group_before
        full_after = state_before
        new_group: int | None = None
        if event.is_state():
            new_group = group_after = await self.hs.state_group_ids.next()
            full_after = {**state_before, event.state_tuple: event.event_id}
        async with stream.tracker.allocate() as pos:
            async def write(c: Any) -> None:
                if new_group is not None:
                    await self.store.store_state_group(c, new_group, event.room_id, group_before,
                                                       {event.state_tuple: event.event_id}, full_after)
                await self.store.insert_event(c, event, pos, self.hs.instance_name, group_before, group_after, txn)
                await c.execute(
                    "INSERT INTO stream_positions (stream_name, instance_name, position) VALUES ('events', $1, $2)"
                    " ON CONFLICT (stream_name, instance_name) DO UPDATE SET position = excluded.position"
                    " WHERE stream_positions.position < excluded.position",
                    self.hs.instance_name, pos)

            await self.hs.db.run_transaction("persist_event", write)
        self._heads[event.room_id] = [event]
        EVENTS_PERSISTED.inc()
        if event.redacts and event.type == "m.room.redaction":
            self.store.invalidate_event(event.redacts)
        users = [event.state_key] if event.membership is not None and event.state_key else []
        await stream.publish(stream.tracker.persisted_upto, row_position=pos, rooms=[event.room_id], users=users,
                             redacts=event.redacts if event.type == "m.room.redaction" else None)
