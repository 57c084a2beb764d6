"""Which events a user is shown, and in what form: history visibility, ignored users, erased senders.

History visibility (client-server spec, "History visibility"): world_readable events are visible to
all; an event is visible to a user who was joined when it was sent; with `shared` also to users joined
now; with `invited` also to users who were invited when it was sent. Membership "when it was sent" is
read from the state after the event, so a user sees their own join; the visibility setting from the
state before it, except that a history_visibility change is judged by the more permissive of the old and
new values.

Ignored users (spec, "Ignoring Users"): the non-state events of the users in the reader's
`m.ignored_user_list` are left out (state events are kept, so the room looks the same to everyone). The
list is cached per user and dropped whenever that user's account data changes (the account data
stream's replication messages name the user), so the next read after an (un)ignore uses the new list.

Erasure: a user deactivated with `erase: true` keeps their events in rooms, but readers who were not
joined when an event was sent get it pruned as a redaction would leave it (as Synapse does,
`filter_events_for_client`): whoever saw it live keeps seeing it, whoever comes later does not.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hs.db.stores.erasure import ErasureStore
from hs.db.stores.ignored_users import ignored_in
from hs.events.event import Event
from hs.events.redaction import redact_pdu
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.server import HomeServer

_ORDER = {"world_readable": 0, "shared": 1, "invited": 2, "joined": 3}
IGNORED_USER_LIST = "m.ignored_user_list"
# Names under which the caches are flushed after a replication outage (hs/streams/caches.py).
IGNORED_CACHE = "ignored_users"
ERASED_CACHE = "erased_users"


def pruned(ev: Event) -> Event:
    """A copy of `ev` pruned as its room version's redaction rules say (same ID and metadata)."""
    out = Event(redact_pdu(ev.pdu, ev.room_version), ev.room_version, ev.event_id)
    out.internal = copy.copy(ev.internal)
    return out


class Visibility:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.erasure_store = ErasureStore(hs.db)
        self._ignored: LruCache[str, frozenset[str]] = LruCache(50000, name="services.visibility.self._ignored")
        self._erased: LruCache[str, bool] = LruCache(100000, name="services.visibility.self._erased")
        # Move on every invalidation: a value read while one happened may predate the change it
        # announces, and is used but not cached.
        self._ignored_version = 0
        self._erased_version = 0
        self._local_suffix = ":" + hs.server_name
        hs.replication.subscribe("account_data", self._on_account_data)
        hs.caches.register(IGNORED_CACHE, self._drop_ignored)
        hs.caches.register(ERASED_CACHE, self._drop_erased)

    # -- ignored users -------------------------------------------------------------------------------------
    def _on_account_data(self, msg: dict[str, Any]) -> None:
        users = msg.get("users")
        if users:
            for user in users:
                self._drop_ignored(user)
        elif msg.get("everyone"):
            self._drop_ignored(None)

    def _drop_ignored(self, user_id: Any) -> None:
        self._ignored_version += 1
        if user_id is None:
            self._ignored.clear()
        else:
            self._ignored.pop(str(user_id))

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        """The users `user_id` ignores, from their `m.ignored_user_list` account data."""
        cached = self._ignored.get(user_id)
        if cached is not None:
            return cached
        version = self._ignored_version
        content = await self.hs.account_data_stream.store.get(user_id, "", IGNORED_USER_LIST)
        ignored = ignored_in(content, user_id)
        if version == self._ignored_version:
            self._ignored.set(user_id, ignored)
        return ignored

    # -- erased users --------------------------------------------------------------------------------------
    def _drop_erased(self, user_id: Any) -> None:
        self._erased_version += 1
        if user_id is None:
            self._erased.clear()
        else:
            self._erased.pop(str(user_id))

    async def mark_erased(self, user_id: str) -> None:
        """Record that the user asked for erasure, here and in every other process's cache."""
        await self.erasure_store.mark_erased(user_id)
        self._drop_erased(user_id)
        await self.hs.caches.invalidate(ERASED_CACHE, user_id)

    async def erased_senders(self, senders: Iterable[str]) -> set[str]:
        """Those of `senders` who are erased (only local users can be)."""
        out: set[str] = set()
        missing: list[str] = []
        for sender in set(senders):
            if not sender.endswith(self._local_suffix):
                continue
            known = self._erased.get(sender)
            if known is None:
                missing.append(sender)
            elif known:
                out.add(sender)
        if missing:
            version = self._erased_version
            found = await self.erasure_store.erased_among(missing)
            if version == self._erased_version:
                for sender in missing:
                    self._erased.set(sender, sender in found)
            out |= found
        return out

    # -- history visibility --------------------------------------------------------------------------------
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
        """The events (of any rooms) the user is shown, in the given order: those history visibility
        lets them see, less the non-state events of users they ignore, with erased senders' events
        pruned unless the user was joined when they were sent."""
        if not events:
            return []
        current = dict(current_membership or {})
        ignored = await self.ignored_users(user_id)
        erased = await self.erased_senders(e.sender for e in events)
        out = []
        for ev in events:
            if ev.sender in ignored and ev.state_key is None:
                continue
            if ev.room_id not in current:
                m = await self.hs.event_store.get_membership(ev.room_id, user_id)
                current[ev.room_id] = m[0] if m else None
            sender_erased = ev.sender in erased
            visible, joined = await self._access(user_id, ev, current[ev.room_id], sender_erased)
            if not visible:
                continue
            out.append(pruned(ev) if sender_erased and not joined else ev)
        return out

    async def event_for_client(self, user_id: str, ev: Event, current_membership: str | None) -> Event | None:
        """`ev` as the user is shown it (possibly pruned), or None if they are not shown it at all."""
        shown = await self.filter_events_for_user(user_id, [ev], {ev.room_id: current_membership})
        return shown[0] if shown else None

    async def is_visible(self, user_id: str, ev: Event, current_membership: str | None) -> bool:
        """Whether history visibility lets the user see the event (ignoring and erasure aside)."""
        return (await self._access(user_id, ev, current_membership, False))[0]

    async def _access(self, user_id: str, ev: Event, current_membership: str | None, need_joined: bool,
                      ) -> tuple[bool, bool]:
        """(may the user see the event, were they joined when it was sent). The second is only worked
        out when `need_joined` (otherwise a world-readable event needs no membership lookup)."""
        before = ev.internal.state_group_before
        after = ev.internal.state_group_after
        visibility = await self._visibility_at(before)
        if ev.type == "m.room.history_visibility" and ev.state_key == "":
            new = ev.content.get("history_visibility", "shared")
            if new in _ORDER and _ORDER[new] < _ORDER[visibility]:
                visibility = new
        if visibility == "world_readable" and not need_joined:
            return True, False
        membership = await self._membership_at(after, user_id)
        if membership == "join":
            return True, True
        if visibility == "world_readable":
            return True, False
        if ev.type == "m.room.member" and ev.state_key == user_id:
            # A user sees their own leave, kick or ban from a room they were in (and their rejection
            # of an invite), judged by the membership before it, as Synapse does; otherwise the event
            # that removes the room from their /sync would be hidden from them.
            prior = await self._membership_at(before, user_id)
            if prior == "join" or (prior == "invite" and ev.membership == "leave"):
                return True, False
        if visibility == "shared" and current_membership == "join":
            return True, False
        if visibility == "invited" and membership == "invite":
            return True, False
        return False, False
