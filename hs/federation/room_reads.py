"""What other servers may read of a room here: events, state, auth chains, missing events, backfill.

A server may read a room when one of its users is in the room, or when the room's history is
world-readable (checked on the room's current state: a server whose users all left can no longer
read). Then each event is judged by the history visibility at it, as Synapse does for servers:
`world_readable` and `shared` events go out whole; an `invited` one only if one of the server's users
was invited or joined at it, a `joined` one only if one was joined; otherwise it goes out redacted, so
the other server still has the DAG's shape but not the content.

Erasure (the spec's `erase` of account deactivation): an erased user's events go out redacted too,
unless one of the server's users was joined when the event was sent: servers that joined later get
redacted copies, as users who joined later do, while those that had it live may have it whole.
(Synapse redacts an erased sender's events for every server; the spec's rule is the one kept here.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hs.errors import forbidden, not_found
from hs.events.auth import get_domain
from hs.events.event import Event, JsonDict, StateKey
from hs.events.redaction import redact_pdu
from hs.federation.acl import check_server_acl
from hs.federation.sender import federation_pdu
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

MAX_BACKFILL = 100
MAX_MISSING_EVENTS = 20


class FederationRoomReads:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def check_server_may_read(self, origin: str, room_id: str) -> None:
        if await self.hs.room_store.get_room_version(room_id) is None:
            raise not_found(f"Unknown room {room_id}")
        await check_server_acl(self.hs, origin, room_id)
        members = await self.store.get_joined_members(room_id)
        if any(get_domain(m) == origin for m in members):
            return
        hv = await self.store.get_current_state_event(room_id, "m.room.history_visibility")
        if hv is not None and hv.content.get("history_visibility") == "world_readable":
            return
        raise forbidden(f"{origin} is not in room {room_id}")

    async def visible_to_server(self, origin: str, event: Event) -> bool:
        """Whether `origin` may see `event`'s content, by the history visibility at the event."""
        if event.internal.outlier or event.internal.state_group_before is None:
            return True  # state and auth events: needed to check the DAG, and servers get them anyway
        state = await self.store.get_state_group(event.internal.state_group_before)
        hv_id = state.get(("m.room.history_visibility", ""))
        hv = await self.store.get_event(hv_id) if hv_id is not None else None
        visibility = hv.content.get("history_visibility", "shared") if hv is not None else "shared"
        if visibility not in ("invited", "joined"):
            return True
        allowed = ("join", "invite") if visibility == "invited" else ("join",)
        return bool(await self._memberships_of(origin, state) & set(allowed))

    async def _memberships_of(self, origin: str, state: Mapping[StateKey, str]) -> set[str]:
        """The memberships the users of `origin` have in `state`."""
        member_ids = [eid for (etype, key), eid in state.items()
                      if etype == "m.room.member" and get_domain(key) == origin]
        members = await self.store.get_events(member_ids)
        return {m.membership for m in members.values() if m.membership is not None}

    async def joined_when_sent(self, origin: str, event: Event) -> bool:
        """Whether one of `origin`'s users was joined when `event` was sent (the state after it, as
        for users: a join is its own witness). Unknown for an outlier: then no."""
        group = event.internal.state_group_after or event.internal.state_group_before
        if event.internal.outlier or group is None:
            return False
        return "join" in await self._memberships_of(origin, await self.store.get_state_group(group))

    async def _for_server(self, origin: str, events: list[Event]) -> list[JsonDict]:
        """The events as `origin` may have them: whole, or redacted where it may not see them, or where
        their sender is erased and the server had no user joined when they were sent."""
        erased = await self.hs.visibility.erased_senders(ev.sender for ev in events) if events else set()
        out = []
        for ev in events:
            whole = await self.visible_to_server(origin, ev)
            if whole and ev.sender in erased:
                whole = await self.joined_when_sent(origin, ev)
            if whole:
                out.append(federation_pdu(ev))
            else:
                out.append(redact_pdu(federation_pdu(ev), ev.room_version))
        return out

    async def _event_in_room(self, room_id: str, event_id: str) -> Event:
        event = await self.store.get_event(event_id)
        if event is None or event.room_id != room_id or event.internal.rejected:
            raise not_found(f"Event {event_id} not found")
        return event

    async def get_event(self, origin: str, event_id: str) -> JsonDict:
        event = await self.store.get_event(event_id)
        if event is None or event.internal.rejected:
            raise not_found(f"Event {event_id} not found")
        await self.check_server_may_read(origin, event.room_id)
        return {"origin": self.hs.server_name, "origin_server_ts": now_ms(),
                "pdus": await self._for_server(origin, [event])}

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        """The state before `event_id` (as the spec defines /state_ids) and its auth chain."""
        await self.check_server_may_read(origin, room_id)
        event = await self._event_in_room(room_id, event_id)
        if event.internal.outlier:
            raise not_found(f"No state is held at {event_id}")
        state = await self.store.get_state_group(event.internal.state_group_before)
        chain = await self.store.get_auth_chain_ids(state.values())
        return {"pdu_ids": list(state.values()), "auth_chain_ids": sorted(chain)}

    async def state(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        ids = await self.state_ids(origin, room_id, event_id)
        events = await self.store.get_events(ids["pdu_ids"] + ids["auth_chain_ids"])
        return {"pdus": [federation_pdu(events[e]) for e in ids["pdu_ids"] if e in events],
                "auth_chain": [federation_pdu(events[e]) for e in ids["auth_chain_ids"] if e in events]}

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> JsonDict:
        await self.check_server_may_read(origin, room_id)
        await self._event_in_room(room_id, event_id)
        chain = await self.store.get_events(await self.store.get_auth_chain_ids([event_id]))
        return {"auth_chain": [federation_pdu(e) for e in chain.values()]}

    async def get_missing_events(self, origin: str, room_id: str, earliest: list[str], latest: list[str],
                                 limit: int, min_depth: int) -> JsonDict:
        """Walk back from `latest` along prev events, stopping at `earliest`, `min_depth` or `limit`."""
        await self.check_server_may_read(origin, room_id)
        limit = max(0, min(limit, MAX_MISSING_EVENTS))
        seen = set(earliest) | set(latest)
        frontier = list(latest)
        found: list[Event] = []
        while frontier and len(found) < limit:
            events = await self.store.get_events(frontier)
            frontier = []
            for ev in sorted(events.values(), key=lambda e: -e.depth):
                for prev in ev.prev_event_ids:
                    if prev in seen:
                        continue
                    seen.add(prev)
                    frontier.append(prev)
            prevs = await self.store.get_events(frontier)
            frontier = []
            for prev_id, prev_event in sorted(prevs.items(), key=lambda kv: -kv[1].depth):
                if prev_event.room_id != room_id or prev_event.depth < min_depth or prev_event.internal.outlier:
                    continue
                if len(found) < limit:
                    found.append(prev_event)
                    frontier.append(prev_id)
        found.sort(key=lambda e: (e.depth, e.internal.stream_ordering or 0))
        return {"events": await self._for_server(origin, found)}

    async def backfill(self, origin: str, room_id: str, from_ids: list[str], limit: int) -> JsonDict:
        """Up to `limit` events at and before `from_ids`, walking prev events breadth-first, newest first."""
        await self.check_server_may_read(origin, room_id)
        limit = max(0, min(limit, MAX_BACKFILL))
        seen: set[str] = set()
        frontier = list(from_ids)
        found: list[Event] = []
        while frontier and len(found) < limit:
            events = await self.store.get_events([f for f in frontier if f not in seen])
            seen.update(frontier)
            frontier = []
            for ev in sorted(events.values(), key=lambda e: -e.depth):
                if ev.room_id != room_id or ev.internal.outlier or len(found) >= limit:
                    continue
                found.append(ev)
                frontier.extend(p for p in ev.prev_event_ids if p not in seen)
        return {"origin": self.hs.server_name, "origin_server_ts": now_ms(),
                "pdus": await self._for_server(origin, found)}

