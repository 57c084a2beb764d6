"""Sliding sync room lists: the user's rooms at the response's token, filtered and ordered.

Which rooms (as Synapse decides): every room the user is joined to, invited to, knocking on or banned
from at the token, and rooms they left only when they were kicked (the leave's sender is someone else)
or left since the connection's previous position (a self-leave shows once, so the client sees it),
forgotten rooms never. Memberships changed after the token are rewound, as /sync does.

Order: `bump_stamp` descending, the stream position of the room's newest event of the types Synapse
counts (`BUMP_EVENT_TYPES`) at or below the token; for a room the user is not joined to, the position
of their membership event (they see nothing after it). Bump stamps come from one statement per request
(per events writer), so the first request for the top 20 of 500 rooms reads no timeline at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hs.db.stores.sliding_sync import SlidingSyncStore
from hs.services.sliding_sync.request import ListConfig, ListFilters
from hs.streams.tokens import StreamToken
from hs.util import LruCache

if TYPE_CHECKING:
    from hs.events.event import Event
    from hs.server import HomeServer

BUMP_EVENT_TYPES = ("m.room.create", "m.room.message", "m.room.encrypted", "m.sticker", "m.call.invite",
                    "m.poll.start", "m.beacon_info")
MEMBER = "m.room.member"
# A room's newest events looked at for a new bump stamp before asking the database.
RECENT_FOR_BUMP = 20
END_OF_STREAM = 2 ** 62
NO_FILTERS = ListFilters()


@dataclass(frozen=True)
class RoomMembership:
    """The user's membership of a room at the token: the event that made it, and where it is."""

    room_id: str
    membership: str
    event_id: str
    position: int
    sender: str


@dataclass
class RoomInfo:
    """What the filters and the order need of a room."""

    membership: RoomMembership
    bump_stamp: int
    # False for rooms lists leave out (left long ago, forgotten): a room subscription still shows
    # them as the user left them.
    listed: bool = True
    room_type: str | None = None
    encrypted: bool = False


@dataclass(frozen=True)
class ListResult:
    count: int
    ranges: tuple[tuple[int, int], ...]
    # The rooms within each range, in order.
    room_ids: tuple[tuple[str, ...], ...]

    def all_rooms(self) -> list[str]:
        return list(dict.fromkeys(r for rng in self.room_ids for r in rng))


@dataclass
class _Snapshot:
    """A user's memberships and their joined rooms' bump stamps at `token`; `rooms` and `ordered`, once
    made, the rooms as `candidate_rooms` answers them and the listed ones in order, for the next
    request at the same token (kept only when no room was left or banned from: whether those are
    listed depends on the request and on forgetting)."""

    token: StreamToken
    memberships: dict[str, RoomMembership]
    stamps: dict[str, int]
    rooms: dict[str, RoomInfo] | None = None
    ordered: list[str] | None = None


class RoomLists:
    def __init__(self, hs: HomeServer, store: SlidingSyncStore) -> None:
        self.hs = hs
        self.store = store
        self.events = hs.event_store
        self._cache: LruCache[str, _Snapshot] = LruCache(10000, name="services.sliding_sync.room_list.self._cache")
        self._dms: LruCache[str, tuple[int, set[str]]] = LruCache(10000, name="services.sliding_sync.room_list.self._dms")

    async def memberships_at(self, user_id: str, upto: StreamToken, since: StreamToken | None,
                             ) -> tuple[dict[str, RoomMembership], set[str]]:
        """The user's memberships at `upto` (rooms never joined nor invited to are absent), and the
        rooms whose membership changed in (since, upto]."""
        room_position = self.hs.events_stream.room_position
        current = await self.store.get_memberships(user_id)
        lowest = (since.min(upto) if since is not None else upto).get("events")
        rows = await self.events.get_membership_changes(user_id, lowest, END_OF_STREAM)
        later = [r for r in rows if r["stream_ordering"] > room_position(upto, r["room_id"])]
        changed: set[str] = set()
        if since is not None:
            changed = {r["room_id"] for r in rows
                       if room_position(since, r["room_id"]) < r["stream_ordering"] <= room_position(upto, r["room_id"])}
        state: dict[str, tuple[str, str]] = dict(current)
        first_after: dict[str, str] = {}
        for r in later:
            first_after.setdefault(r["room_id"], r["event_id"])
        for room_id, event_id in first_after.items():
            prior = await self._membership_before(event_id, user_id)
            if prior is None:
                state.pop(room_id, None)
            else:
                state[room_id] = prior
        events = await self.events.get_events([eid for _, eid in state.values()])
        out: dict[str, RoomMembership] = {}
        for room_id, (membership, event_id) in state.items():
            ev = events.get(event_id)
            if ev is None:
                continue
            # (An event held as an outlier has no stream position: nothing is read up to it.)
            out[room_id] = RoomMembership(room_id, membership, event_id, ev.internal.stream_ordering or 0, ev.sender)
        return out, changed

    async def _membership_before(self, event_id: str, user_id: str) -> tuple[str, str] | None:
        ev = await self.events.get_event(event_id)
        if ev is None:
            return None
        state = await self.events.get_state_group(ev.internal.state_group_before)
        prior_id = state.get((MEMBER, user_id))
        if prior_id is None:
            return None
        prior = await self.events.get_event(prior_id)
        if prior is None or prior.membership is None:
            return None
        return prior.membership, prior_id

    async def candidate_rooms(self, user_id: str, upto: StreamToken, since: StreamToken | None,
                              ) -> tuple[dict[str, RoomInfo], set[str]]:
        """Every room the user has a membership of at `upto` (`listed` for those lists may show), with
        their bump stamps, and the rooms whose membership changed since `since`.

        A long-polling connection asks this on every wake-up: while the user's memberships have not
        changed, the previous answer is reused and only the rooms with new events get their bump
        stamp read again."""
        cached = self._cache.get(user_id)
        if cached is not None:
            reused = await self._from_cache(user_id, cached, upto, since)
            if reused is not None:
                return await self._without_ignored_invites(user_id, reused), set()
        memberships, changed = await self.memberships_at(user_id, upto, since)
        joined = [r for r, m in memberships.items() if m.membership == "join"]
        stamps = await self._bump_stamps(joined, upto)
        self._cache.set(user_id, _Snapshot(upto, memberships, stamps))
        rooms = await self._rooms(user_id, memberships, stamps, changed)
        return await self._without_ignored_invites(user_id, rooms), changed

    async def _without_ignored_invites(self, user_id: str, rooms: dict[str, RoomInfo]) -> dict[str, RoomInfo]:
        """The rooms less invites from users the user ignores (the spec: not sent to the client). Applied
        after the snapshot, which the ignore list can change under without any membership changing."""
        inviters = {info.membership.sender for info in rooms.values() if info.membership.membership == "invite"}
        if not inviters:
            return rooms
        ignored = await self.hs.visibility.ignored_users(user_id)
        if not ignored or not inviters & ignored:
            return rooms
        return {room_id: info for room_id, info in rooms.items()
                if not (info.membership.membership == "invite" and info.membership.sender in ignored)}

    async def _from_cache(self, user_id: str, cached: _Snapshot, upto: StreamToken, since: StreamToken | None,
                          ) -> dict[str, RoomInfo] | None:
        """The rooms from the snapshot brought forward to `upto`, if no membership of the user changed
        after the snapshot nor after `since` (so no room was left since `since` either)."""
        lowest = cached.token.get("events") if since is None else min(since.get("events"), cached.token.get("events"))
        if self.events.user_membership_changed_after(user_id, lowest) or cached.token.stream_is_after(upto, "events"):
            return None
        if upto.stream_is_after(cached.token, "events"):
            joined = [r for r, m in cached.memberships.items() if m.membership == "join"]
            bumped: list[str] = []
            for writer, ids in self.hs.events_stream.rooms_by_writer(joined).items():
                bumped.extend(await self.events.get_rooms_with_events_between(
                    ids, cached.token.writer_position("events", writer), upto.writer_position("events", writer)))
            newer = await self._newer_bump_stamps(bumped, cached.token, upto)
            rooms = None
            if cached.rooms is not None:
                rooms = dict(cached.rooms)
                for room_id, stamp in newer.items():
                    rooms[room_id] = RoomInfo(cached.memberships[room_id], stamp)
            cached = _Snapshot(upto, cached.memberships, {**cached.stamps, **newer}, rooms,
                               cached.ordered if not newer else None)
            self._cache.set(user_id, cached)
        if cached.rooms is not None:
            return cached.rooms
        rooms = await self._rooms(user_id, cached.memberships, cached.stamps, set())
        if not any(m.membership in ("leave", "ban") for m in cached.memberships.values()):
            cached.rooms = rooms
        return rooms

    async def _newer_bump_stamps(self, room_ids: list[str], after: StreamToken, upto: StreamToken,
                                 ) -> dict[str, int]:
        """Bump stamps of rooms with events in (after, upto]: from their newest events (in memory
        as a rule), the database only for a room whose newest events hold no bump event."""
        room_position = self.hs.events_stream.room_position
        out: dict[str, int] = {}
        unknown: list[str] = []
        for room_id in room_ids:
            events, more = await self.events.get_room_events_stream(
                room_id, room_position(after, room_id), room_position(upto, room_id), RECENT_FOR_BUMP)
            bump = next((e for e in reversed(events) if e.type in BUMP_EVENT_TYPES), None)
            if bump is not None:
                out[room_id] = bump.internal.position()
            elif more:
                unknown.append(room_id)
        out.update(await self._bump_stamps(unknown, upto))
        return out

    async def _bump_stamps(self, room_ids: list[str], upto: StreamToken) -> dict[str, int]:
        stamps: dict[str, int] = {}
        for writer, ids in self.hs.events_stream.rooms_by_writer(room_ids).items():
            stamps.update(await self.store.get_bump_stamps(ids, BUMP_EVENT_TYPES, upto.writer_position("events", writer)))
        return stamps

    async def _rooms(self, user_id: str, memberships: dict[str, RoomMembership], stamps: dict[str, int],
                     changed: set[str]) -> dict[str, RoomInfo]:
        forgotten = await self.store.get_forgotten(user_id) if any(
            m.membership in ("leave", "ban") for m in memberships.values()) else set()
        rooms: dict[str, RoomInfo] = {}
        for room_id, m in memberships.items():
            listed = not (
                # left by themselves before the connection's previous position
                (m.membership == "leave" and m.sender == user_id and room_id not in changed)
                or (m.membership in ("leave", "ban") and room_id in forgotten))
            # A joined room with no bump event here (joined over federation after it): the join.
            stamp = stamps.get(room_id, m.position) if m.membership == "join" else m.position
            rooms[room_id] = RoomInfo(m, stamp, listed=listed)
        return rooms

    async def _add_room_facts(self, rooms: dict[str, RoomInfo], wanted: Iterable[str]) -> None:
        """Fill in room types and encryption (current state) for the filters that need them."""
        ids = list(wanted)
        found = await self.store.get_state_event_ids(ids, ["m.room.create", "m.room.encryption"])
        creates = await self.events.get_events([t["m.room.create"] for t in found.values() if "m.room.create" in t])
        for room_id in ids:
            types = found.get(room_id, {})
            info = rooms[room_id]
            info.encrypted = "m.room.encryption" in types
            create = creates.get(types.get("m.room.create", ""))
            if create is not None:
                room_type = create.content.get("type")
                info.room_type = room_type if isinstance(room_type, str) else None
            elif info.membership.membership in ("invite", "knock"):
                await self._facts_from_stripped_state(info)

    async def _facts_from_stripped_state(self, info: RoomInfo) -> None:
        """A room on another server known only through the invite: its stripped state tells."""
        ev: Event | None = await self.events.get_event(info.membership.event_id)
        if ev is None:
            return
        unsigned = ev.pdu.get("unsigned") or {}
        for item in unsigned.get("invite_room_state") or unsigned.get("knock_room_state") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "m.room.create":
                room_type = (item.get("content") or {}).get("type")
                info.room_type = room_type if isinstance(room_type, str) else None
            elif item.get("type") == "m.room.encryption":
                info.encrypted = True

    async def compute(self, user_id: str, rooms: dict[str, RoomInfo], lists: dict[str, ListConfig],
                      ) -> dict[str, ListResult]:
        """Each list's count and the rooms within its ranges."""
        ordered = self._ordered(user_id, rooms)
        need_facts = any(f.filters.is_encrypted is not None or f.filters.room_types is not None
                         or f.filters.not_room_types for f in lists.values())
        if need_facts:
            await self._add_room_facts(rooms, ordered)
        dms: set[str] | None = None
        tags: dict[str, dict[str, Any]] | None = None
        space_children: dict[str, set[str]] = {}
        if any(f.filters.is_dm is not None for f in lists.values()):
            dms = await self.dm_rooms(user_id)
        if any(f.filters.tags is not None or f.filters.not_tags for f in lists.values()):
            tags = await self.store.get_room_tags(user_id)
        spaces = {s for f in lists.values() for s in (f.filters.spaces or ())}
        if spaces:
            space_children = await self._space_children(sorted(spaces))
        out: dict[str, ListResult] = {}
        for name, config in lists.items():
            matching = ordered if config.filters == NO_FILTERS else [
                r for r in ordered if _matches(rooms[r], config.filters, dms, tags, space_children)]
            out[name] = ListResult(len(matching), config.ranges,
                                   tuple(tuple(matching[s:e + 1]) for s, e in config.ranges))
        return out

    def _ordered(self, user_id: str, rooms: dict[str, RoomInfo]) -> list[str]:
        """The listed rooms by bump stamp, newest first (kept with the user's snapshot when `rooms` is
        the snapshot's: the next request at the same token sorts nothing)."""
        cached = self._cache.get(user_id)
        if cached is not None and cached.rooms is rooms and cached.ordered is not None:
            return cached.ordered
        ordered = sorted((r for r, info in rooms.items() if info.listed), key=lambda r: (-rooms[r].bump_stamp, r))
        if cached is not None and cached.rooms is rooms:
            cached.ordered = ordered
        return ordered

    async def dm_rooms(self, user_id: str) -> set[str]:
        """The rooms of the user's m.direct account data (read again only once account data moved)."""
        position = self.hs.notifier.current.get("account_data")
        cached = self._dms.get(user_id)
        if cached is not None and cached[0] == position:
            return cached[1]
        content = await self.hs.account_data_stream.store.get(user_id, "", "m.direct") or {}
        out: set[str] = set()
        for room_ids in content.values():
            if isinstance(room_ids, list):
                out.update(r for r in room_ids if isinstance(r, str))
        self._dms.set(user_id, (position, out))
        return out

    async def _space_children(self, spaces: list[str]) -> dict[str, set[str]]:
        children = await self.store.get_space_children(spaces)
        events = await self.events.get_events([eid for items in children.values() for _, eid in items])
        out: dict[str, set[str]] = {}
        for space, items in children.items():
            for child, eid in items:
                ev = events.get(eid)
                # A child event with no `via` is a removed child.
                if ev is not None and isinstance(ev.content.get("via"), list) and ev.content["via"]:
                    out.setdefault(space, set()).add(child)
        return out


def _matches(info: RoomInfo, f: ListFilters, dms: set[str] | None, tags: dict[str, dict[str, Any]] | None,
             space_children: dict[str, set[str]]) -> bool:
    room_id = info.membership.room_id
    if f.is_dm is not None and dms is not None and (room_id in dms) != f.is_dm:
        return False
    if f.spaces is not None and not any(room_id in space_children.get(s, ()) for s in f.spaces):
        return False
    if f.is_encrypted is not None and info.encrypted != f.is_encrypted:
        return False
    if f.is_invite is not None and (info.membership.membership == "invite") != f.is_invite:
        return False
    if f.room_types is not None and info.room_type not in f.room_types:
        return False
    if f.not_room_types and info.room_type in f.not_room_types:
        return False
    room_tags = (tags or {}).get(room_id, {})
    if f.tags is not None and not any(t in room_tags for t in f.tags):
        return False
    if f.not_tags and any(t in room_tags for t in f.not_tags):
        return False
    return True
