"""Backfill: when a reader pages back past the oldest event this server holds of a room it joined over
federation, the older events are asked of a server in the room (`/backfill`) and stored.

Backfilled events get *negative* stream orderings (each batch below the lowest so far), as in
Synapse: /messages orders by (depth, stream ordering) and finds them in place, while /sync, which
reads positive stream ranges, never shows old history as new. Their state: this server did not see
the room then, so each takes the state before the oldest event it holds with a state (its join):
history visibility and lazy-loaded members read that, which is what the joining user was shown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hs.events.auth import AuthError, get_domain
from hs.events.event import Event
from hs.federation.event_handler import PduRejected
from hs.federation.remote import RemoteRooms
from hs.util import KeyedLocks

if TYPE_CHECKING:
    from hs.db.pool import Connection
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

BACKFILL_LIMIT = 100
# How many of the room's oldest events are looked at for prev events we lack.
EDGE_SCAN = 20


class Backfiller:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.remote = RemoteRooms(hs.federation_client)
        self._locks = KeyedLocks()

    async def backward_extremities(self, room_id: str) -> tuple[list[str], Event | None]:
        """The prev events of the room's oldest held events that this server lacks, and the oldest
        held event that has a state (whose state before backfilled events take)."""
        rows = await self.hs.db.fetch(
            "SELECT event_id FROM events WHERE room_id = $1 ORDER BY depth ASC, stream_ordering ASC LIMIT $2",
            room_id, EDGE_SCAN)
        oldest = await self.store.get_events([r["event_id"] for r in rows])
        wanted = {p for ev in oldest.values() for p in ev.prev_event_ids}
        lacking = sorted(wanted - await self._in_timeline(wanted))
        anchor = next((ev for ev in sorted(oldest.values(), key=lambda e: (e.depth, e.internal.position()))
                       if ev.internal.state_group_before is not None), None)
        return lacking, anchor

    async def _in_timeline(self, event_ids: set[str] | list[str]) -> set[str]:
        """Which of these events have a place in the room's timeline here (not outliers)."""
        return {eid for eid, ev in (await self.store.get_events(event_ids)).items() if not ev.internal.outlier}

    async def backfill(self, room_id: str) -> int:
        """Fetch and store older events of a remote room; the number stored (0: nothing older to have).
        On a cluster the room's events writer does it (it alone writes the room's events)."""
        room = await self.hs.room_store.get_room(room_id)
        if room is None or not room.get("remote"):
            return 0
        if not self.hs.events_stream.is_writer_for_room(room_id):
            from hs.replication.federation_calls import backfill

            return await backfill(self.hs, room_id)
        return len(await self.backfill_here(room_id))

    async def backfill_here(self, room_id: str) -> list[str]:
        """`backfill` on the room's writer: the IDs of the events stored (their cached copies elsewhere,
        outliers until now, are stale: every process is told to drop them)."""
        async with self._locks.lock(room_id):
            extremities, anchor = await self.backward_extremities(room_id)
            if not extremities or anchor is None:
                return []
            members = await self.store.get_joined_members(room_id)
            servers = sorted({get_domain(m) for m in members} - {self.hs.server_name})
            for server in servers:
                try:
                    pdus = await self.remote.backfill(server, room_id, extremities, BACKFILL_LIMIT)
                except Exception as e:
                    logger.info("backfill of %s from %s failed: %s", room_id, server, e)
                    continue
                stored = await self._store(server, room_id, pdus, anchor)
                if stored:
                    return stored
            return []

    async def _store(self, server: str, room_id: str, pdus: list[dict[str, object]], anchor: Event) -> list[str]:
        rv = anchor.room_version
        handler = self.hs.federation_event_handler
        events: list[Event] = []
        for pdu in pdus:
            try:
                ev = await handler.checked_event(pdu, rv)
            except PduRejected as e:
                logger.info("backfilled event from %s dropped: %s", server, e)
                continue
            if ev.room_id == room_id:
                events.append(ev)
        held = await self.store.get_events([ev.event_id for ev in events])
        if any(ev.internal.rejected for ev in held.values()):
            events = [ev for ev in events if not (ev.event_id in held and held[ev.event_id].internal.rejected)]
        new = {ev.event_id: ev for ev in events
               if ev.event_id not in held or held[ev.event_id].internal.outlier}
        if not new:
            return []
        # Auth chains first (as outliers), then each event against its own auth events.
        accepted: list[Event] = []
        for ev in sorted(new.values(), key=lambda e: (e.depth, e.event_id)):
            try:
                known = await handler.ensure_auth_events(server, ev)
                known.update({k: v for k, v in new.items() if k in ev.auth_event_ids})
                await handler.check_against_auth_events(ev, known)
            except (AuthError, PduRejected) as e:
                logger.info("backfilled event %s from %s rejected: %s", ev.event_id, server, e)
                continue
            accepted.append(ev)
        if not accepted:
            return []
        group = anchor.internal.state_group_before
        instance = self.hs.instance_name
        state = await self.store.get_state_group(group)
        # A backfilled redaction takes effect only as a received one would (EventSender's rule).
        applies = {ev.event_id: await self.hs.event_sender.received_redaction_applies(ev, state)
                   for ev in accepted if ev.type == "m.room.redaction"}

        async def write(c: Connection) -> None:
            lowest = int(await c.fetchval("SELECT MIN(stream_ordering) FROM events") or 0)
            position = min(lowest, 0) - 1
            # Newest first, so that within one depth the stream order follows the DAG.
            for ev in sorted(accepted, key=lambda e: (e.depth, e.origin_server_ts), reverse=True):
                await self.store.remove_outlier(c, ev.event_id)  # held as state or auth chain until now
                ev.internal.outlier = False
                await self.store.insert_event(c, ev, position, instance, group, group, None,
                                              update_current_state=False,
                                              apply_redaction=applies.get(ev.event_id, True))
                position -= 1

        await self.hs.db.run_transaction("backfill", write)
        stale = [ev.event_id for ev in accepted]
        stale += [ev.redacts for ev in accepted if ev.redacts and applies.get(ev.event_id)]
        stream = self.hs.events_stream
        if stream.tracker is not None:
            # Other processes may hold these as outliers (state fetched at the join) or redacted
            # events unredacted: the events stream's invalidation drops them (a re-announcement of
            # this writer's position, carrying the IDs).
            await stream.publish(stream.tracker.persisted_upto, redacts=stale)
        for ev in accepted:
            self.store.cache_event(ev)
        logger.info("backfilled %d event(s) of %s from %s", len(accepted), room_id, server)
        return stale
