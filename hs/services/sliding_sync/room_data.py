"""One room's entry in a sliding sync response, given what the connection had sent of it.

* A room never sent (or sent as an invite or knock and now joined or left) is `initial`: its newest
  `timeline_limit` visible events and its full `required_state`.
* A room sent and up to date at the previous position ("live"), or sent earlier and then out of the
  lists ("previously", up to its `sent_upto`), gets what happened since: the events after that point
  (at most `timeline_limit`, `limited` when more) and the required_state entries that changed. A
  changed required_state config resends the whole required_state; a larger timeline_limit resends
  the newest events (`expanded`). An unchanged room with nothing new gets no entry.
* Invites and knocks carry the stripped state of the membership event.
* A room the user left or was banned from is read up to their leave, never past it (the membership
  event bounds every read; CVE-2024-53867), and the timeline passes hs's history visibility rules.

`num_live` counts the timeline's events newer than the previous position's token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hs.db.stores.sliding_sync import RoomRecord, SlidingSyncStore
from hs.events.event import Event, StateKey
from hs.services.serialize import serialize_event, serialize_events
from hs.services.sliding_sync.request import LAZY, MEMBER, RoomConfig
from hs.services.sliding_sync.room_list import RoomMembership
from hs.streams.tokens import StreamToken, TopologicalToken
from hs.util import json_dumps, json_loads

if TYPE_CHECKING:
    from hs.server import HomeServer

# The state an invitee or knocker sees of a room (client-server spec, "Stripped state").
STRIPPED_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.topic",
                        "m.room.canonical_alias", "m.room.encryption")
MAX_HEROES = 5
# Lazily loaded members remembered per room and connection; beyond this they are sent again.
MAX_LAZY_MEMBERS = 1000
FILL_ATTEMPTS = 3
SUMMARY_TYPES = (MEMBER, "m.room.name", "m.room.avatar")


@dataclass
class RoomResult:
    """A room's entry, before it is rendered in the request's shape (hs/api/client/sliding_sync.py)."""

    membership: str
    initial: bool
    bump_stamp: int
    name: str | None = None
    avatar: str | None = None
    heroes: list[dict[str, Any]] | None = None
    required_state: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] | None = None
    prev_batch: str | None = None
    limited: bool | None = None
    num_live: int | None = None
    joined_count: int | None = None
    invited_count: int | None = None
    notification_count: int = 0
    highlight_count: int = 0
    stripped_state: list[dict[str, Any]] | None = None
    expanded_timeline: bool = False
    is_dm: bool = False
    needs_counts: bool = False  # joined_count and invited_count are due
    needs_heroes: bool = False  # heroes are due (a joined room with no name)


@dataclass(frozen=True)
class RoomPlan:
    room_id: str
    membership: RoomMembership
    config: RoomConfig
    record: RoomRecord | None
    bump_stamp: int


def config_key(membership: str, config: RoomConfig) -> str:
    return json_dumps([membership, config.required_state.key(), config.timeline_limit])


class RoomData:
    def __init__(self, hs: HomeServer, ss_store: SlidingSyncStore) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.ss_store = ss_store

    async def compute(self, user_id: str, device_id: str | None, plan: RoomPlan, since: StreamToken | None,
                      upto: StreamToken, has_events: bool | None = None) -> tuple[RoomResult | None, RoomRecord]:
        """The room's entry (None: nothing new to send) and its record once this response is sent.
        `has_events`: whether the room had events since it was last sent, when the caller knows."""
        m = plan.membership
        key = config_key(m.membership, plan.config)
        rec = plan.record
        if m.membership in ("invite", "knock"):
            record = RoomRecord("live", m.position, key)
            if rec is not None and rec.config == key:
                return None, record
            stripped = await self._stripped_state(m.event_id)
            result = RoomResult(m.membership, True, plan.bump_stamp, stripped_state=stripped)
            for ev in stripped:
                if ev.get("type") == "m.room.name" and isinstance((ev.get("content") or {}).get("name"), str):
                    result.name = ev["content"]["name"]
                elif ev.get("type") == "m.room.avatar" and isinstance((ev.get("content") or {}).get("url"), str):
                    result.avatar = ev["content"]["url"]
            return result, record

        room_position = self.hs.events_stream.room_position
        upto_pos = room_position(upto, plan.room_id) if m.membership == "join" else m.position
        record = RoomRecord("live", upto_pos, key, rec.lazy_members if rec is not None else ())
        prev = json_loads(rec.config) if rec is not None else None
        initial = prev is None or prev[0] in ("invite", "knock") or (prev[0] != "join" and m.membership == "join")
        config = plan.config
        expanded = False
        full_state = initial
        after = 0
        if not initial:
            assert rec is not None and prev is not None
            after = rec.sent_upto if rec.status != "live" or since is None else room_position(since, plan.room_id)
            after = min(after, upto_pos)
            expanded = config.timeline_limit > int(prev[2])
            full_state = prev[1] != config.required_state.key()
            if has_events is None or rec.status != "live":
                has_events = bool(await self.store.get_rooms_with_events_between([plan.room_id], after, upto_pos))
            if not has_events and not expanded and not full_state and prev[0] == m.membership:
                return None, record

        timeline_after = 0 if initial or expanded else after
        events, limited = await self._timeline(user_id, plan.room_id, timeline_after, upto_pos,
                                               config.timeline_limit, m.membership)
        newest = await self.store.get_latest_event_at(plan.room_id, upto_pos)
        end_state = await self.store.get_state_group(newest.internal.state_group_after) if newest else {}
        # The state the client had (None: it has nothing), and what it is asked to have now.
        before = None if initial else await self._state_at(plan.room_id, after)
        previous = None if full_state else before

        since_pos = room_position(since, plan.room_id) if since is not None else None
        result = RoomResult(m.membership, initial, plan.bump_stamp, expanded_timeline=expanded)
        result.timeline = await serialize_events(self.hs, events, device_id, include_room_id=False)
        result.limited = limited
        result.num_live = (0 if since_pos is None
                           else sum(1 for e in events if e.internal.position() > since_pos))
        result.prev_batch = (TopologicalToken(events[0].depth, events[0].internal.position() - 1).encode()
                             if events else upto.encode())
        known = set() if previous is None or rec is None else set(rec.lazy_members)
        result.required_state, known = await self._required_state(user_id, device_id, plan.config, events,
                                                                   end_state, previous, known)
        lazy_members = tuple(sorted(known)) if len(known) <= MAX_LAZY_MEMBERS else ()
        record = RoomRecord("live", upto_pos, key, lazy_members)
        # Name, avatar, heroes and counts: the first time, and when what they come from changed.
        if before is None or any(before.get(k) != v for k, v in end_state.items() if k[0] in SUMMARY_TYPES) \
                or any(k not in end_state for k in before if k[0] in SUMMARY_TYPES):
            await self._summary(result, user_id, plan.room_id, end_state, with_members=m.membership == "join")
        return result, record

    async def _timeline(self, user_id: str, room_id: str, after: int, upto: int, limit: int, membership: str,
                        ) -> tuple[list[Event], bool]:
        """The newest `limit` events in (after, upto] the user may see, oldest first, and `limited`."""
        if limit <= 0:
            return [], bool(await self.store.get_rooms_with_events_between([room_id], after, upto))
        raw, more = await self.store.get_room_events_stream(room_id, after, upto, limit)
        events = await self._visible(user_id, room_id, raw, membership)
        oldest = raw[0] if raw else None
        attempts = 0
        while more and len(events) < limit and oldest is not None and attempts < FILL_ATTEMPTS:
            attempts += 1
            chunk, more = await self.store.get_room_events_stream(room_id, after, oldest.internal.position() - 1,
                                                                  max(limit * 2, 20))
            if not chunk:
                break
            oldest = chunk[0]
            events = await self._visible(user_id, room_id, chunk, membership) + events
        return events[-limit:], more or len(events) > limit

    async def _visible(self, user_id: str, room_id: str, events: list[Event], membership: str) -> list[Event]:
        if not events:
            return []
        visible: list[Event] = await self.hs.visibility.filter_events_for_user(user_id, events,
                                                                              {room_id: membership})
        return visible

    async def _state_at(self, room_id: str, position: int) -> dict[StateKey, str]:
        latest = await self.store.get_latest_event_at(room_id, position)
        if latest is None:
            return {}
        return await self.store.get_state_group(latest.internal.state_group_after)

    async def _required_state(self, user_id: str, device_id: str | None, config: RoomConfig,
                              timeline: list[Event], end_state: dict[StateKey, str],
                              previous: dict[StateKey, str] | None, known: set[str],
                              ) -> tuple[list[dict[str, Any]], set[str]]:
        """The required_state entries to send (all of them when `previous` is None, else those changed
        since), and the lazily loaded members the client then has: `known` are those sent before,
        whose member event is sent again only when it changed."""
        rs = config.required_state
        if rs.is_empty():
            return [], known
        chosen = {k: v for k, v in end_state.items() if k[1] != LAZY and rs.matches(k[0], k[1], user_id)}
        if previous is not None:
            chosen = {k: v for k, v in chosen.items() if previous.get(k) != v}
        if rs.lazy_members:
            known = set(known)
            for sender in {e.sender for e in timeline}:
                member_key = (MEMBER, sender)
                value = end_state.get(member_key)
                if value is None:
                    continue
                changed = previous is not None and previous.get(member_key) != value
                if sender not in known or changed:
                    chosen[member_key] = value
                known.add(sender)
        if not chosen:
            return [], known
        found = await self.store.get_events(list(chosen.values()))
        events = sorted((found[v] for v in chosen.values() if v in found), key=lambda e: e.internal.position())
        return await serialize_events(self.hs, events, device_id, include_room_id=False), known

    async def _summary(self, result: RoomResult, user_id: str, room_id: str, state: dict[StateKey, str],
                       with_members: bool) -> None:
        """name, avatar, heroes and member counts. As Synapse: `name` only from m.room.name (clients
        name the room from the heroes when it has none); heroes and counts only for joined rooms, from
        the room's current members (indexed queries, whatever the room's size; the counts of all the
        response's rooms in one, by the service)."""
        wanted = [state[(t, "")] for t in ("m.room.name", "m.room.avatar") if (t, "") in state]
        events = await self.store.get_events(wanted)
        name_ev = events.get(state.get(("m.room.name", ""), ""))
        if name_ev is not None and isinstance(name_ev.content.get("name"), str) and name_ev.content["name"]:
            result.name = name_ev.content["name"]
        avatar_ev = events.get(state.get(("m.room.avatar", ""), ""))
        if avatar_ev is not None and isinstance(avatar_ev.content.get("url"), str) and avatar_ev.content["url"]:
            result.avatar = avatar_ev.content["url"]
        if not with_members:
            return
        result.needs_counts = True  # filled in for all rooms of the response at once
        result.needs_heroes = result.name is None  # likewise (`add_heroes`)

    async def add_heroes(self, user_id: str, results: dict[str, RoomResult]) -> None:
        """The heroes of every room of the response that needs them, read in one statement."""
        wanted = [r for r, entry in results.items() if entry.needs_heroes]
        if not wanted:
            return
        hero_ids = await self.ss_store.get_heroes(wanted, user_id, MAX_HEROES)
        found = await self.store.get_events([i for ids in hero_ids.values() for i in ids])
        for room_id in wanted:
            heroes = results[room_id].heroes = []
            for ev in (found[i] for i in hero_ids.get(room_id, ()) if i in found):
                hero: dict[str, Any] = {"user_id": ev.state_key}
                if isinstance(ev.content.get("displayname"), str):
                    hero["displayname"] = ev.content["displayname"]
                if isinstance(ev.content.get("avatar_url"), str):
                    hero["avatar_url"] = ev.content["avatar_url"]
                heroes.append(hero)

    async def _stripped_state(self, event_id: str) -> list[dict[str, Any]]:
        ev = await self.store.get_event(event_id)
        if ev is None:
            return []
        state = await self.store.get_state_group(ev.internal.state_group_after)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        if ev.sender != ev.state_key and (MEMBER, ev.sender) in state:
            ids.append(state[(MEMBER, ev.sender)])  # the inviter, as Synapse sends it
        found = await self.store.get_events(ids)
        stripped: list[dict[str, Any]] = [
            {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": e.content}
            for e in (found[i] for i in ids if i in found)
        ]
        if ("m.room.create", "") not in state:  # a room on another server: the stripped state it sent
            unsigned = ev.pdu.get("unsigned") or {}
            stripped = [s for s in unsigned.get("invite_room_state") or unsigned.get("knock_room_state") or []
                        if isinstance(s, dict)]
        stripped.append(serialize_event(ev, include_room_id=False))
        return stripped
