"""Reading a room's history: /messages, /context, single events, /timestamp_to_event, and how much of
a room a user may read at all (`check_read_access`, also used by state reads, relations and aliases).

Pagination tokens name a *gap* between events: `t<depth>-<stream>` is the gap just after the event at
that topological position, so "backwards from a token" returns events at or before it and "forwards"
returns events after it. Sync tokens (`s<events>_...`) are accepted too and name the gap after the
room's last event at or before that stream position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs.errors import bad_json, forbidden, invalid_param, not_found
from hs.events.event import Event, JsonDict
from hs.services.room_ids import check_room_id
from hs.services.room_membership import MEMBER
from hs.services.serialize import serialize_events
from hs.streams.tokens import InvalidToken, StreamToken, TopologicalToken

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester

# Events scanned at most by one /messages or /context request while skipping events the user may not
# see or the filter excludes; past this the response carries an `end` token to continue from.
MAX_SCAN = 2000
MAX_LIMIT = 1000

# A point in a room's timeline: the gap just after the event at (depth, stream_ordering).
Point = tuple[int, int]


@dataclass
class ReadAccess:
    """How much of a room a user may read: all of it (joined or world readable), or up to their leave."""

    membership: str | None
    # For users who left or were banned: their last membership event; reads stop there.
    cap: Event | None = None


@dataclass
class EventFilter:
    """The parts of a RoomEventFilter /messages and /context apply."""

    types: list[str] | None = None
    not_types: list[str] | None = None
    senders: list[str] | None = None
    not_senders: list[str] | None = None
    rooms: list[str] | None = None
    not_rooms: list[str] | None = None
    contains_url: bool | None = None
    limit: int | None = None
    lazy_load_members: bool = False

    @classmethod
    def parse(cls, raw: Any) -> EventFilter:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise bad_json("filter must be a JSON object")
        f = cls()
        for key in ("types", "not_types", "senders", "not_senders", "rooms", "not_rooms"):
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad_json(f"filter '{key}' must be a list of strings")
            setattr(f, key, value)
        if raw.get("contains_url") is not None:
            if not isinstance(raw["contains_url"], bool):
                raise bad_json("filter 'contains_url' must be a boolean")
            f.contains_url = raw["contains_url"]
        if raw.get("limit") is not None:
            limit = raw["limit"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise bad_json("filter 'limit' must be an integer greater than 0")
            f.limit = limit
        for key in ("lazy_load_members", "include_redundant_members"):
            if raw.get(key) is not None and not isinstance(raw[key], bool):
                raise bad_json(f"filter '{key}' must be a boolean")
        f.lazy_load_members = bool(raw.get("lazy_load_members"))
        return f

    def allows_room(self, room_id: str) -> bool:
        if self.not_rooms is not None and room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, ev: Event) -> bool:
        if self.not_types is not None and any(_type_matches(p, ev.type) for p in self.not_types):
            return False
        if self.types is not None and not any(_type_matches(p, ev.type) for p in self.types):
            return False
        if self.not_senders is not None and ev.sender in self.not_senders:
            return False
        if self.senders is not None and ev.sender not in self.senders:
            return False
        if self.contains_url is not None:
            has_url = isinstance(ev.content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True


def _type_matches(pattern: str, etype: str) -> bool:
    if "*" not in pattern:
        return pattern == etype
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, etype) is not None


def point_of(ev: Event) -> Point:
    """The gap just after `ev`."""
    return (ev.depth, ev.internal.position())


def gap_before(ev: Event) -> Point:
    """The gap just before `ev`."""
    return (ev.depth, ev.internal.position() - 1)


def encode_point(point: Point) -> str:
    return TopologicalToken(point[0], point[1]).encode()


class RoomHistory:
    """What a member (or a reader of a world-readable room) sees of a room's timeline."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def check_read_access(self, user_id: str, room_id: str, allow_departed: bool = True) -> ReadAccess:
        """Members read everything, departed members up to their leave, others only world-readable rooms."""
        check_room_id(room_id)
        current = await self.store.get_membership(room_id, user_id)
        if current is not None and current[0] == "join":
            return ReadAccess("join")
        if allow_departed and current is not None and current[0] in ("leave", "ban"):
            ev = await self.store.get_event(current[1])
            if ev is not None and ev.internal.stream_ordering is not None:
                # Did they ever join? Only then did they see anything.
                if await self.store.has_ever_joined(room_id, user_id):
                    return ReadAccess(current[0], ev)
        if await self.hs.room_store.room_exists(room_id) and await self._world_readable(room_id):
            return ReadAccess(current[0] if current else None)
        raise forbidden(f"User {user_id} not in room {room_id}")

    async def _world_readable(self, room_id: str) -> bool:
        ev = await self.store.get_current_state_event(room_id, "m.room.history_visibility")
        return ev is not None and ev.content.get("history_visibility") == "world_readable"

    async def event_near_timestamp(self, requester: Requester, room_id: str, ts: int, forwards: bool) -> JsonDict:
        """GET /timestamp_to_event: the event closest to `ts` in the given direction, among those the
        user may read (a departed member's up to their departure)."""
        access = await self.check_read_access(requester.user_id, room_id)
        cap = access.cap.internal.stream_ordering if access.cap is not None else None
        found = await self.store.get_event_near_timestamp(room_id, ts, forwards, cap)
        if found is None:
            direction = "forward" if forwards else "backward"
            raise not_found(f"Unable to find event from {ts} in {direction} direction")
        return {"event_id": found[0], "origin_server_ts": found[1]}

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> JsonDict:
        check_room_id(room_id)
        ev = await self.store.get_event(event_id)
        # Rejected and soft-failed events (from other servers) are never shown.
        if ev is None or ev.room_id != room_id or ev.internal.rejected or ev.internal.soft_failed:
            raise not_found("Event not found.")
        current = await self.store.get_membership(room_id, requester.user_id)
        shown = await self.hs.visibility.event_for_client(requester.user_id, ev, current[0] if current else None)
        if shown is None:
            raise not_found("Event not found.")
        return (await self.hs.relations.serialize([shown], requester))[0]

    # -- tokens and timeline positions ---------------------------------------------------------------------
    async def parse_token(self, room_id: str, token: str) -> Point:
        try:
            if token.startswith("t"):
                t = TopologicalToken.decode(token)
                return (t.depth, t.stream)
            if token.startswith("s"):
                pos = self.hs.events_stream.room_position(StreamToken.decode(token), room_id)
                return (await self.store.get_depth_at(room_id, pos) or 0, pos)
        except InvalidToken:
            pass
        raise invalid_param(f"Invalid pagination token {token!r}")

    async def _latest_point(self, room_id: str) -> Point:
        return await self.store.get_last_point(room_id) or (0, 0)

    async def _scan(self, user_id: str, room_id: str, point: Point, backwards: bool, limit: int,
                    to: Point | None, current_membership: str | None, filt: EventFilter,
                    ) -> tuple[list[Event], Point | None]:
        """The next `limit` filter-matching events from the gap `point` in one direction, less those the
        user may not see or whose senders they ignore (erased senders' pruned, hs/services/visibility.py),
        and the gap after the last event looked at (None when the timeline has no more events that way).

        As in Synapse, history visibility thins a page rather than extending it: a page of events the
        user may not see comes back empty but with a token to continue from.
        """
        if limit <= 0:
            return [], point
        matched: list[Event] = []
        cursor = point
        scanned = 0
        backfilled = False
        next_point: Point | None = None
        while True:
            want = max(limit - len(matched), 20)
            if backwards:
                to_arg = (to[0], to[1] + 1) if to is not None else None
                batch = await self.store.paginate_room(room_id, cursor[0], cursor[1] + 1, True, want + 1, to_arg)
            else:
                batch = await self.store.paginate_room(room_id, cursor[0], cursor[1], False, want + 1, to)
            more = len(batch) > want
            page = batch[:want]
            done = False
            for i, ev in enumerate(page):
                cursor = gap_before(ev) if backwards else point_of(ev)
                scanned += 1
                if filt.matches(ev):
                    matched.append(ev)
                    if len(matched) >= limit:
                        exhausted = i == len(page) - 1 and not more
                        next_point = None if exhausted else cursor
                        done = True
                        break
            if done:
                break
            if not more:
                # The oldest event held here: a room joined over federation may have older ones on
                # other servers (fetched once per page).
                if backwards and not backfilled and self.hs.config.federation_domain_whitelist != []:
                    backfilled = True
                    if await self.hs.backfiller.backfill(room_id):
                        continue
                next_point = None
                break
            if scanned >= MAX_SCAN:
                next_point = cursor
                break
        visible = await self.hs.visibility.filter_events_for_user(user_id, matched, {room_id: current_membership})
        return visible, next_point

    async def _lazy_members(self, events: list[Event]) -> list[Event]:
        """The member events of the senders of `events`, as of the state at each sender's event."""
        wanted: dict[str, str] = {}
        for ev in events:
            if ev.sender in wanted:
                continue
            state = await self.store.get_state_group(ev.internal.state_group_after)
            eid = state.get((MEMBER, ev.sender))
            if eid is not None:
                wanted[ev.sender] = eid
        found = await self.store.get_events(list(wanted.values()))
        return [found[e] for e in wanted.values() if e in found]

    async def get_messages(self, requester: Requester, room_id: str, from_token: str | None,
                           to_token: str | None, direction: str, limit: int, filt: EventFilter) -> JsonDict:
        user_id = requester.user_id
        access = await self.check_read_access(user_id, room_id)
        backwards = direction == "b"
        if filt.limit is not None:
            limit = min(limit, filt.limit)
        limit = min(limit, MAX_LIMIT)
        if from_token is not None:
            point = await self.parse_token(room_id, from_token)
        else:
            point = await self._latest_point(room_id) if backwards else (0, 0)
        start = from_token if from_token is not None else encode_point(point)
        to = await self.parse_token(room_id, to_token) if to_token is not None else None
        if access.cap is not None:
            cap = point_of(access.cap)
            if backwards:
                point = min(point, cap)
            else:
                to = cap if to is None else min(to, cap)
        if not filt.allows_room(room_id):
            return {"chunk": [], "start": start}
        events, next_point = await self._scan(user_id, room_id, point, backwards, limit, to,
                                              access.membership, filt)
        result: JsonDict = {
            "chunk": await self.hs.relations.serialize(events, requester),
            "start": start,
        }
        if next_point is not None:
            result["end"] = encode_point(next_point)
        if filt.lazy_load_members:
            result["state"] = await serialize_events(self.hs, await self._lazy_members(events))
        return result

    async def get_context(self, requester: Requester, room_id: str, event_id: str, limit: int,
                          filt: EventFilter) -> JsonDict:
        user_id = requester.user_id
        access = await self.check_read_access(user_id, room_id)
        stored = await self.store.get_event(event_id)
        ev = None
        if stored is not None and stored.room_id == room_id:
            ev = await self.hs.visibility.event_for_client(user_id, stored, access.membership)
        if ev is None:
            raise not_found("Event not found.")
        if filt.limit is not None:
            limit = min(limit, filt.limit)
        limit = min(limit, MAX_LIMIT)
        before, after, start, end = await self._around(user_id, ev, access, limit // 2, limit - limit // 2, filt)
        last = after[-1] if after else ev
        state_ids = await self.store.get_state_group(last.internal.state_group_after)
        if filt.lazy_load_members:
            state_evs = await self._lazy_members([*before, ev, *after])
        else:
            found = await self.store.get_events(list(state_ids.values()))
            state_evs = sorted(found.values(), key=lambda e: e.internal.stream_ordering or 0)
        serialized = await self.hs.relations.serialize([*before, ev, *after], requester)
        return {
            "event": serialized[len(before)],
            "events_before": serialized[:len(before)],
            "events_after": serialized[len(before) + 1:],
            "start": encode_point(start),
            "end": encode_point(end),
            "state": await serialize_events(self.hs, state_evs),
        }

    async def _around(self, user_id: str, ev: Event, access: ReadAccess, before_limit: int, after_limit: int,
                      filt: EventFilter) -> tuple[list[Event], list[Event], Point, Point]:
        """The events the user may see just before and after `ev`, and the tokens at both ends."""
        room_id = ev.room_id
        before, before_next = await self._scan(user_id, room_id, gap_before(ev), True, before_limit, None,
                                               access.membership, filt)
        to = point_of(access.cap) if access.cap is not None else None
        after, after_next = await self._scan(user_id, room_id, point_of(ev), False, after_limit, to,
                                             access.membership, filt)
        start = before_next if before_next is not None else (
            gap_before(before[-1]) if before else gap_before(ev))
        end = after_next if after_next is not None else (point_of(after[-1]) if after else point_of(ev))
        return before, after, start, end

    async def context_around(self, requester: Requester, ev: Event, before_limit: int, after_limit: int,
                             ) -> JsonDict:
        """Search results' context: the events around one the user found (and so may see)."""
        access = await self.check_read_access(requester.user_id, ev.room_id)
        before, after, start, end = await self._around(requester.user_id, ev, access, before_limit, after_limit,
                                                       EventFilter())
        device = requester.device_id
        return {"events_before": await serialize_events(self.hs, before, device),
                "events_after": await serialize_events(self.hs, after, device),
                "start": encode_point(start), "end": encode_point(end)}

