"""History visibility: which events a user may see, by `m.room.history_visibility` and membership.

The rules (client-server spec, "History visibility"): world_readable events are visible to all; an event
is visible to a user who was joined when it was sent; with `shared` also to users joined now; with
`invited` also to users who were invited when it was sent. Membership "when it was sent" is read from
the state after the event, so a user sees their own join; the visibility setting from the state before
it, except that a history_visibility change is judged by the more permissive of the old and new values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hs.events.event import Event

if TYPE_CHECKING:
    from hs.server import HomeServer

_ORDER = {"world_readable": 0, "shared": 1, "invited": 2, "joined": 3}


class Visibility:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def _visibility_at(self, group: int | None) -> str:
        state = await self.hs.event_store.get_state_group(group)
        eid = state.get(("m.room.history_visibility", ""))
        if eid is None:
            return "shared"
        ev = await self.hs.event_store.get_event(eid)
        value = ev.content.get("history_visibility", "shared") if ev else "shared"
        return value if value in _ORDER else "shared"

    async def _membership_at(self, group: int | None, user_id: str) -> str | None:
        state = await self.hs.event_store.get_state_group(group)
        eid = state.get(("m.room.member", user_id))
        if eid is None:
            return None
        ev = await self.hs.event_store.get_event(eid)
        return ev.membership if ev else None

    async def filter_events_for_user(self, user_id: str, events: list[Event],
                                     current_membership: dict[str, str | None] | None = None) -> list[Event]:
        """The events (of any rooms) the user may see, in the given order."""
        current = dict(current_membership or {})
        out = []
        for ev in events:
            if ev.room_id not in current:
                m = await self.hs.event_store.get_membership(ev.room_id, user_id)
                current[ev.room_id] = m[0] if m else None
            if await self.is_visible(user_id, ev, current[ev.room_id]):
                out.append(ev)
        return out

    async def is_visible(self, user_id: str, ev: Event, current_membership: str | None) -> bool:
        before = ev.internal.state_group_before
        after = ev.internal.state_group_after
        visibility = await self._visibility_at(before)
        if ev.type == "m.room.history_visibility" and ev.state_key == "":
            new = ev.content.get("history_visibility", "shared")
            if new in _ORDER and _ORDER[new] < _ORDER[visibility]:
                visibility = new
        if visibility == "world_readable":
            return True
        membership = await self._membership_at(after, user_id)
        if membership == "join":
            return True
        if ev.type == "m.room.member" and ev.state_key == user_id:
            # A user sees their own leave, kick or ban from a room they were in (and their rejection
            # of an invite), judged by the membership before it, as Synapse does; otherwise the event
            # that removes the room from their /sync would be hidden from them.
            prior = await self._membership_at(before, user_id)
            if prior == "join" or (prior == "invite" and ev.membership == "leave"):
                return True
        if visibility == "shared" and current_membership == "join":
            return True
        if visibility == "invited" and membership == "invite":
            return True
        return False
