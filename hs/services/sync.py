"""/sync: the initial snapshot and the incremental deltas of a user's rooms, with long-polling.

Consistency rule: a response covers exactly the events stream range (since, next_batch], where
`next_batch` is the notifier's position taken *before* anything is read. Everything at or below that
position is persisted and visible (hs/streams/base.py), so a chain of syncs sees every event once:
never skipped, never repeated. Every query is bounded above by that position, including the user's
memberships, which are rewound when they changed after it. With several event persisters the
position is one per writer, and each room's range is its own writer's (`EventsStream.room_position`):
a persister that is down holds back its rooms only.

Per room the response holds (client-server spec, "Syncing"):

* `timeline`: the newest `limit` events of the range the user may see and the filter lets through,
  oldest first; `limited` when older ones were left out, and `prev_batch` naming the gap just before
  the first returned event (`t<depth>-<stream - 1>`, for /messages dir=b; see hs/services/room_history.py).
* `state`: the state at the *start* of the timeline, minus what the client already has: everything
  for an initial sync, a room joined within the range or `full_state`; otherwise the difference from
  the state at `since` (empty unless the timeline is limited, since the state events are then in the
  timeline). State changes the client would otherwise never see, because the timeline filter or
  history visibility hid the events, are taken from the state at the end of the timeline.

Long-polling: when an incremental sync has nothing to say it waits on the notifier for the user and
their joined rooms, then computes again; the common "nothing changed" check costs three indexed
queries and no per-room work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

from hs.errors import MatrixError, invalid_param, not_json
from hs.events.event import Event, StateKey
from hs.events.redaction import redact_pdu
from hs.services.filtering import DEFAULT_FILTER, Filter, only_fields
from hs.services.serialize import serialize_event, serialize_events
from hs.services.sync_sections import SECTIONS, SyncRequest, check_sections
from hs.streams.tokens import StreamToken, TopologicalToken
from hs.util import LruCache, json_loads

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

SYNC_COMPUTE = Histogram("hs_sync_compute_seconds", "Time to compute one /sync pass", ["kind"],
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))

MEMBER = "m.room.member"
ALL_MEMBERSHIPS = ("join", "invite", "leave", "ban", "knock")
# The state an invitee or knocker sees of a room (client-server spec, "Stripped state").
STRIPPED_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.topic",
                        "m.room.canonical_alias", "m.room.encryption")
# Stream positions are BIGINT; this is above any position.
END_OF_STREAM = 2 ** 62
# How many times a filtered timeline fetches older events to fill up to its limit.
FILL_ATTEMPTS = 3
MAX_HEROES = 5


@dataclass(frozen=True)
class SyncConfig:
    user_id: str
    device_id: str | None = None
    filter: Filter = DEFAULT_FILTER
    since: StreamToken | None = None
    full_state: bool = False
    timeout_ms: int = 0
    set_presence: str = "online"


@dataclass(frozen=True)
class _RoomPlan:
    """One room entry to compute: its section, the stream range of its timeline, and how much state."""

    room_id: str
    section: str  # "join" or "leave"
    after: int  # the timeline holds events with after < stream_ordering <= upto
    upto: int
    full_state: bool  # all state at the timeline start, rather than the delta since `after`
    membership: str  # the user's membership at `upto`, for history visibility
    with_state: bool = True  # False for a room the user only ever was invited to (rejected invites)
    newly_joined: bool = False  # joined within an incremental sync's range


class SyncService:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.events_stream = hs.events_stream
        # Filters are immutable once stored, so they are parsed once.
        self._filters: LruCache[tuple[str, int], Filter] = LruCache(10000, name="services.sync.self._filters")
        self._inline_filters: LruCache[str, Filter] = LruCache(1000, name="services.sync.self._inline_filters")
        # Lazy-loading: the member event last sent per (user, device, room) and member, so members the
        # client already has are not sent again (unless include_redundant_members).
        self._sent_members: LruCache[tuple[str, str | None, str], dict[str, str]] = LruCache(50000, name="services.sync.self._sent_members")
        self._sections = [section(hs) for section in SECTIONS]
        for problem in check_sections(tuple(hs.streams)):
            logger.warning("%s: its changes never reach /sync", problem)

    # -- filters -----------------------------------------------------------------------------------------
    async def resolve_filter(self, user_id: str, param: str | None) -> Filter:
        """The `filter` query parameter: a stored filter's ID, or a filter as inline JSON."""
        if param is None or param == "":
            return DEFAULT_FILTER
        if param.startswith("{"):
            cached = self._inline_filters.get(param)
            if cached is not None:
                return cached
            try:
                raw = json_loads(param)
            except ValueError:
                raise not_json("Invalid filter JSON") from None
            parsed = Filter.parse(raw, allow_zero_limit=True)
            self._inline_filters.set(param, parsed)
            return parsed
        if not (param.isascii() and param.isdigit()) or len(param) > 18:
            raise invalid_param("Invalid filter ID")
        key = (user_id, int(param))
        cached = self._filters.get(key)
        if cached is not None:
            return cached
        stored = await self.hs.user_store.get_filter(user_id, key[1])
        if stored is None:
            raise invalid_param("No such filter")
        try:
            parsed = Filter.parse(stored)
        except MatrixError:
            # Stored before validation got stricter: use what is usable rather than fail every sync.
            logger.warning("stored filter %s of %s no longer validates; ignoring it", param, user_id)
            parsed = DEFAULT_FILTER
        self._filters.set(key, parsed)
        return parsed

    # -- entry point ---------------------------------------------------------------------------------------
    async def sync(self, config: SyncConfig) -> dict[str, Any]:
        """Compute a /sync response, long-polling up to `timeout_ms` when an incremental one is empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0, config.timeout_ms) / 1000
        notifier = self.hs.notifier
        if config.since is not None:
            config = self._clamp_since(config, config.since)
        await self.hs.presence.user_syncing(config.user_id, config.set_presence, config.timeout_ms)
        while True:
            now = notifier.current
            request = SyncRequest(config, now)
            next_token = request.next_token
            body = self._body(next_token)
            has_updates = False
            for section in self._sections:
                result = await section.add(request, body)
                has_updates = has_updates or result.updated
                if result.reached is not None:
                    next_token = next_token.with_position(section.STREAM, result.reached)
            body["next_batch"] = next_token.encode()
            joined = request.joined
            if has_updates or config.since is None or config.full_state:
                return body
            remaining = deadline - loop.time()
            if remaining <= 0:
                return body
            if notifier.current.is_after(now):
                # Something was persisted while we computed: look again before sleeping, since the
                # notification for it has already gone out.
                continue
            # No await between the check above and the listener's registration inside `wait`.
            await notifier.wait(config.user_id, joined, remaining)

    async def add_rooms(self, config: SyncConfig, now: StreamToken, next_token: StreamToken, body: dict[str, Any],
                        ) -> tuple[bool, list[str]]:
        """The rooms section (the events stream): fill `body["rooms"]`; returns whether anything was
        added, and the rooms the user is joined to at `now`. `next_token` is the response's."""
        since = config.since
        rooms: dict[str, dict[str, Any]] = body["rooms"]
        kind = "initial" if since is None else "incremental"
        with SYNC_COMPUTE.labels(kind).time():
            if since is None:
                plans, invites, knocks, joined = await self._initial_plans(config, now)
            else:
                after = since.min(now)
                if not now.stream_is_after(after, "events") and not config.full_state:
                    # Fast path: nothing was persisted since the token.
                    joined = list(await self.store.get_rooms_for_user(config.user_id, ("join",)))
                    return False, joined
                plans, invites, knocks, joined = await self._incremental_plans(config, after, now)
            for plan in plans:
                entry = await self._room_entry(config, plan, next_token)
                if entry is not None:
                    rooms[plan.section][plan.room_id] = entry
            ignored = await self.hs.visibility.ignored_users(config.user_id) if invites else frozenset()
            for room_id, event_id in invites:
                stripped = await self._stripped_state(event_id, ignored)
                if stripped is not None:
                    rooms["invite"][room_id] = {"invite_state": {"events": stripped}}
            for room_id, event_id in knocks:
                stripped = await self._stripped_state(event_id)
                if stripped is not None:
                    rooms["knock"][room_id] = {"knock_state": {"events": stripped}}
        return any(rooms.values()), joined

    @staticmethod
    def _body(next_token: StreamToken) -> dict[str, Any]:
        return {
            "next_batch": next_token.encode(),
            "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
            "presence": {"events": []},
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }

    # -- account data and typing -------------------------------------------------------------------------
    def _room_entry_for(self, body: dict[str, Any], room_id: str) -> dict[str, Any]:
        """A joined room's entry in the response, added empty if the rooms section gave it none."""
        rooms_join: dict[str, dict[str, Any]] = body["rooms"]["join"]
        entry = rooms_join.get(room_id)
        if entry is None:
            entry = rooms_join[room_id] = empty_join_entry(body["next_batch"])
        return entry

    async def add_account_data(self, config: SyncConfig, now: StreamToken, body: dict[str, Any],
                               joined: list[str]) -> bool:
        """The account data section: global, and per joined room (a room with nothing else gets an
        entry with an empty timeline). Returns whether anything was added."""
        since = config.since
        f = config.filter
        upto = now.get("account_data")
        after = 0 if since is None else min(since.get("account_data"), upto)
        if after >= upto:
            return False
        joined_set = {r for r in joined if f.room_allowed(r)}
        added = False
        per_room: dict[str, list[dict[str, Any]]] = {}
        for row in await self.hs.account_data_stream.store.get_changed(config.user_id, after, upto):
            ev = {"type": row["type"], "content": row["content"]}
            if not row["room_id"]:
                if f.account_data.type_allowed(row["type"]):
                    body["account_data"]["events"].append(ev)
                    added = True
            elif (row["room_id"] in joined_set and f.room.account_data.type_allowed(row["type"])
                  and f.room.account_data.room_allowed(row["room_id"])):
                per_room.setdefault(row["room_id"], []).append(ev)
        for room_id in sorted(per_room):
            self._room_entry_for(body, room_id)["account_data"]["events"].extend(per_room[room_id])
            added = True
        return added

    async def add_typing(self, config: SyncConfig, now: StreamToken, body: dict[str, Any],
                         joined: list[str]) -> bool:
        """The typing section: who is typing in the joined rooms whose typing changed in the range."""
        since = config.since
        f = config.filter
        typing_upto = now.get("typing")
        typing_after = None if since is None else min(since.get("typing"), typing_upto)
        if not f.room.ephemeral.type_allowed("m.typing") or (typing_after is not None and typing_after >= typing_upto):
            return False
        rooms = [r for r in joined if f.room_allowed(r) and f.room.ephemeral.room_allowed(r)]
        changes = self.hs.typing_stream.changes(rooms, typing_after, typing_upto)
        for room_id in sorted(changes):
            entry = self._room_entry_for(body, room_id)
            entry.setdefault("ephemeral", {"events": []})["events"].append(
                {"type": "m.typing", "content": {"user_ids": changes[room_id]}})
        return bool(changes)

    def _clamp_since(self, config: SyncConfig, since: StreamToken) -> SyncConfig:
        """Typing positions restart at 0 with the writer: a token from before that reads as 0."""
        typing = since.get("typing")
        clamped = self.hs.typing_stream.clamp(typing)
        if clamped == typing:
            return config
        return replace(config, since=since.with_position("typing", clamped))

    # -- memberships ---------------------------------------------------------------------------------------
    async def _membership_before(self, event_id: str, user_id: str) -> tuple[str, str] | None:
        """The user's (membership, event_id) in the state just before `event_id`."""
        ev = await self.store.get_event(event_id)
        if ev is None:
            return None
        state = await self.store.get_state_group(ev.internal.state_group_before)
        prior_id = state.get((MEMBER, user_id))
        if prior_id is None:
            return None
        prior = await self.store.get_event(prior_id)
        if prior is None or prior.membership is None:
            return None
        return prior.membership, prior_id

    async def _rewind(self, user_id: str, memberships: dict[str, tuple[str, str | None]],
                      later: Iterable[dict[str, Any]]) -> None:
        """Undo membership changes persisted after the sync's upper bound (rows in stream order)."""
        first_after: dict[str, str] = {}
        for row in later:
            first_after.setdefault(row["room_id"], row["event_id"])
        for room_id, event_id in first_after.items():
            prior = await self._membership_before(event_id, user_id)
            if prior is None:
                memberships.pop(room_id, None)
            else:
                memberships[room_id] = prior

    async def _membership_event(self, room_id: str, user_id: str, known: str | None) -> Event | None:
        if known is None:
            current = await self.store.get_membership(room_id, user_id)
            if current is None:
                return None
            known = current[1]
        return await self.store.get_event(known)

    # -- planning ------------------------------------------------------------------------------------------
    async def _initial_plans(self, config: SyncConfig, now: StreamToken,
                             ) -> tuple[list[_RoomPlan], list[tuple[str, str]], list[tuple[str, str]], list[str]]:
        user_id = config.user_id
        room_position = self.events_stream.room_position
        current = await self.store.get_rooms_for_user(user_id, ALL_MEMBERSHIPS)
        memberships: dict[str, tuple[str, str | None]] = {r: (m, None) for r, m in current.items()}
        later = [r for r in await self.store.get_membership_changes(user_id, now.get("events"), END_OF_STREAM)
                 if r["stream_ordering"] > room_position(now, r["room_id"])]
        if later:
            await self._rewind(user_id, memberships, later)
        plans: list[_RoomPlan] = []
        invites: list[tuple[str, str]] = []
        knocks: list[tuple[str, str]] = []
        joined = [r for r, (m, _) in memberships.items() if m == "join"]
        for room_id, (membership, event_id) in sorted(memberships.items()):
            if not config.filter.room_allowed(room_id):
                continue
            if membership == "join":
                plans.append(_RoomPlan(room_id, "join", 0, room_position(now, room_id), True, "join"))
            elif membership in ("invite", "knock"):
                ev = await self._membership_event(room_id, user_id, event_id)
                if ev is not None:
                    (invites if membership == "invite" else knocks).append((room_id, ev.event_id))
            elif membership in ("leave", "ban") and config.filter.include_leave:
                if await self.store.is_forgotten(user_id, room_id):
                    continue
                ev = await self._membership_event(room_id, user_id, event_id)
                if ev is None:
                    continue
                prior = await self._membership_before(ev.event_id, user_id)
                was_joined = prior is not None and prior[0] == "join"
                plans.append(_RoomPlan(room_id, "leave", 0, ev.internal.position(), True, membership,
                                       with_state=was_joined))
        return plans, invites, knocks, joined

    async def _incremental_plans(self, config: SyncConfig, after_token: StreamToken, upto_token: StreamToken,
                                 ) -> tuple[list[_RoomPlan], list[tuple[str, str]], list[tuple[str, str]], list[str]]:
        user_id = config.user_id
        room_position = self.events_stream.room_position
        lowest = after_token.get("events")
        # Current memberships first, then the changes: any change the first read reflects is then in
        # the second, so rewinding the ones after `upto` is exact.
        cached = self.store.cached_rooms_for_user(user_id, ("join",))
        if cached is not None and not self.store.user_membership_changed_after(user_id, lowest):
            # The common case: no membership change of this user since the token.
            current, rows = cached, []
        else:
            current = await self.store.get_rooms_for_user(user_id, ("join",))
            rows = [r for r in await self.store.get_membership_changes(user_id, lowest, END_OF_STREAM)
                    if r["stream_ordering"] > room_position(after_token, r["room_id"])]
        memberships: dict[str, tuple[str, str | None]] = {r: (m, None) for r, m in current.items()}
        in_range = [r for r in rows if r["stream_ordering"] <= room_position(upto_token, r["room_id"])]
        later = [r for r in rows if r["stream_ordering"] > room_position(upto_token, r["room_id"])]
        if later:
            await self._rewind(user_id, memberships, later)
        joined = [r for r, (m, _) in memberships.items() if m == "join"]
        joined_set = set(joined)

        by_room: dict[str, list[dict[str, Any]]] = {}
        for row in in_range:
            by_room.setdefault(row["room_id"], []).append(row)

        plans: list[_RoomPlan] = []
        invites: list[tuple[str, str]] = []
        knocks: list[tuple[str, str]] = []
        newly_joined: set[str] = set()
        for room_id, changes in by_room.items():
            if not config.filter.room_allowed(room_id):
                continue
            last = changes[-1]
            membership = last["membership"]
            if membership == "join":
                if room_id not in joined_set:
                    continue
                if any(c["membership"] != "join" for c in changes):
                    newly_joined.add(room_id)
                else:
                    prior = await self._membership_before(changes[0]["event_id"], user_id)
                    if prior is None or prior[0] != "join":
                        newly_joined.add(room_id)
            elif membership == "invite":
                invites.append((room_id, last["event_id"]))
            elif membership == "knock":
                knocks.append((room_id, last["event_id"]))
            elif membership in ("leave", "ban"):
                if await self.store.is_forgotten(user_id, room_id):
                    continue
                prior = await self._membership_before(changes[0]["event_id"], user_id)
                joined_at_since = prior is not None and prior[0] == "join"
                joined_in_range = any(c["membership"] == "join" for c in changes)
                plans.append(_RoomPlan(
                    room_id, "leave", room_position(after_token, room_id), int(last["stream_ordering"]),
                    full_state=config.full_state or (joined_in_range and not joined_at_since),
                    membership=membership, with_state=joined_at_since or joined_in_range))

        for room_id in sorted(newly_joined):
            plans.append(_RoomPlan(room_id, "join", 0, room_position(upto_token, room_id), True, "join",
                                   newly_joined=True))
        candidates = [r for r in joined if r not in newly_joined and config.filter.room_allowed(r)]
        changed: set[str] = set()
        if config.full_state:
            changed.update(candidates)
        else:
            for writer, rooms in self.events_stream.rooms_by_writer(candidates).items():
                changed |= await self.store.get_rooms_with_events_between(
                    rooms, after_token.writer_position("events", writer),
                    upto_token.writer_position("events", writer))
        for room_id in sorted(changed):
            plans.append(_RoomPlan(room_id, "join", room_position(after_token, room_id),
                                   room_position(upto_token, room_id), config.full_state, "join"))
        return plans, invites, knocks, joined

    # -- one room ------------------------------------------------------------------------------------------
    async def _visible(self, config: SyncConfig, room_id: str, events: list[Event], membership: str) -> list[Event]:
        timeline_filter = config.filter.room.timeline
        if not timeline_filter.is_unrestricted:
            events = [e for e in events if timeline_filter.matches(e)]
        if not events:
            return []
        visible: list[Event] = await self.hs.visibility.filter_events_for_user(
            config.user_id, events, {room_id: membership})
        return visible

    async def _timeline(self, config: SyncConfig, plan: _RoomPlan) -> tuple[list[Event], bool, Event | None]:
        """(events, limited, newest event of the range before filtering)."""
        limit = config.filter.timeline_limit
        if limit <= 0:
            # An empty timeline was asked for (an inline filter's `limit: 0`): limited when the range
            # has events at all.
            raw, _ = await self.store.get_room_events_stream(plan.room_id, plan.after, plan.upto, 1)
            return [], bool(raw), raw[-1] if raw else None
        raw, more = await self.store.get_room_events_stream(plan.room_id, plan.after, plan.upto, limit)
        newest = raw[-1] if raw else None
        events = await self._visible(config, plan.room_id, raw, plan.membership)
        oldest = raw[0] if raw else None
        attempts = 0
        while more and len(events) < limit and oldest is not None and attempts < FILL_ATTEMPTS:
            attempts += 1
            chunk, more = await self.store.get_room_events_stream(
                plan.room_id, plan.after, oldest.internal.position() - 1, max(limit * 2, 20))
            if not chunk:
                break
            oldest = chunk[0]
            events = await self._visible(config, plan.room_id, chunk, plan.membership) + events
        limited = more or len(events) > limit
        return events[-limit:], limited, newest

    async def _state_at_position(self, room_id: str, position: int) -> dict[StateKey, str]:
        """The room's state after its last event at or below `position` (empty if none)."""
        latest = await self.store.get_latest_event_at(room_id, position)
        if latest is None:
            return {}
        return await self.store.get_state_group(latest.internal.state_group_after)

    async def _room_entry(self, config: SyncConfig, plan: _RoomPlan, next_token: StreamToken,
                          ) -> dict[str, Any] | None:
        room_id = plan.room_id
        timeline, limited, newest = await self._timeline(config, plan)
        if plan.newly_joined and not limited:
            # As Synapse: a room joined since the last sync is limited unless its timeline starts at
            # the room's beginning, so the client knows to paginate for the history before it.
            limited = not timeline or timeline[0].type != "m.room.create"
        if newest is None:
            newest = await self.store.get_latest_event_at(room_id, plan.upto)
        if newest is None:
            return None
        end_ids = await self.store.get_state_group(newest.internal.state_group_after)
        start_ids = (await self.store.get_state_group(timeline[0].internal.state_group_before)
                     if timeline else end_ids)
        previous: dict[StateKey, str] | None = None
        if not plan.full_state and plan.with_state:
            previous = await self._state_at_position(room_id, plan.after)

        lazy = config.filter.lazy_load_members
        summary: dict[str, Any] | None = None
        heroes: list[str] = []
        if plan.section == "join" and (previous is None or _summary_inputs_changed(previous, end_ids)):
            summary = await self._summary(end_ids, config.user_id)
            heroes = summary.get("m.heroes", [])

        state_events: list[Event] = []
        if plan.with_state:
            state_events = await self._state_events(config, plan, timeline, start_ids, end_ids, previous,
                                                    limited, heroes if lazy else [])
        if (plan.section == "join" and not plan.full_state and not timeline and not state_events):
            return None

        # Pagination tokens name the gap just after the event at (depth, stream): the gap before the
        # first event is "after (its depth, its stream - 1)". With no events, the live end at next_batch.
        prev_batch = (TopologicalToken(timeline[0].depth, timeline[0].internal.position() - 1).encode()
                      if timeline else next_token.encode())
        entry: dict[str, Any] = {
            "timeline": {"events": await self._serialize(config, timeline), "limited": limited,
                         "prev_batch": prev_batch},
            "state": {"events": await self._serialize(config, state_events)},
            "account_data": {"events": []},
        }
        if plan.section == "join":
            entry["ephemeral"] = {"events": []}
            entry["summary"] = summary or {}
            entry["unread_notifications"] = {"notification_count": 0, "highlight_count": 0}
        if lazy:
            self._remember_sent_members(config, plan, timeline, state_events)
        return entry

    async def _state_events(self, config: SyncConfig, plan: _RoomPlan, timeline: list[Event],
                            start_ids: dict[StateKey, str], end_ids: dict[StateKey, str],
                            previous: dict[StateKey, str] | None, limited: bool, heroes: list[str],
                            ) -> list[Event]:
        in_timeline = {e.event_id for e in timeline}
        chosen: dict[StateKey, str] = {}
        for key in start_ids.keys() | end_ids.keys():
            value = start_ids.get(key)
            at_end = end_ids.get(key)
            if at_end is not None and at_end != value and at_end not in in_timeline:
                # Changed by an event the timeline does not show (filtered out or not visible): the
                # client would never learn it otherwise.
                value = at_end
            if value is None or value in in_timeline:
                continue
            if previous is not None and previous.get(key) == value:
                continue
            chosen[key] = value

        state_filter = config.filter.room.state
        lazy = config.filter.lazy_load_members
        if lazy:
            wanted = {e.sender for e in timeline} | set(heroes)
            if plan.full_state:
                wanted.add(config.user_id)
            sent = ({} if plan.full_state or config.filter.include_redundant_members
                    else self._sent_members.get((config.user_id, config.device_id, plan.room_id)) or {})
            # Of the members, only those the timeline needs (spec, "Lazy-loading room members"): in an
            # incremental sync too, where other members' changes in a gap are left out.
            chosen = {k: v for k, v in chosen.items() if k[0] != MEMBER or k[1] in wanted}
            for member in wanted:
                key = (MEMBER, member)
                value = start_ids.get(key)
                if value is None or value in in_timeline or key in chosen:
                    continue
                if sent.get(member) == value:
                    continue
                chosen[key] = value
        chosen = {k: v for k, v in chosen.items() if state_filter.type_allowed(k[0])}
        if not chosen:
            return []
        events = await self.store.get_events(list(chosen.values()))
        out = [events[v] for v in chosen.values() if v in events]
        if not state_filter.is_unrestricted:
            out = [e for e in out if state_filter.matches(e)]
        out.sort(key=lambda e: e.internal.stream_ordering or 0)
        return out

    def _remember_sent_members(self, config: SyncConfig, plan: _RoomPlan, timeline: list[Event],
                               state: list[Event]) -> None:
        key = (config.user_id, config.device_id, plan.room_id)
        sent = {} if plan.full_state else dict(self._sent_members.get(key) or {})
        for ev in list(state) + list(timeline):
            if ev.type == MEMBER and ev.state_key is not None:
                sent[ev.state_key] = ev.event_id
        self._sent_members.set(key, sent)

    async def _summary(self, state: dict[StateKey, str], user_id: str) -> dict[str, Any]:
        member_ids = {k[1]: v for k, v in state.items() if k[0] == MEMBER}
        wanted = list(member_ids.values())
        for t in ("m.room.name", "m.room.canonical_alias"):
            if (t, "") in state:
                wanted.append(state[(t, "")])
        events = await self.store.get_events(wanted)
        members = [events[v] for v in member_ids.values() if v in events]
        joined = [e for e in members if e.membership == "join"]
        invited = [e for e in members if e.membership == "invite"]
        summary: dict[str, Any] = {"m.joined_member_count": len(joined), "m.invited_member_count": len(invited)}
        name_ev = events.get(state.get(("m.room.name", ""), ""))
        alias_ev = events.get(state.get(("m.room.canonical_alias", ""), ""))
        if (name_ev is not None and name_ev.content.get("name")) or (
                alias_ev is not None and alias_ev.content.get("alias")):
            return summary

        def order(evs: list[Event]) -> list[str]:
            evs = sorted(evs, key=lambda e: e.internal.stream_ordering or 0)
            return [e.state_key for e in evs if e.state_key and e.state_key != user_id][:MAX_HEROES]

        heroes = order(joined + invited)
        if not heroes:
            heroes = order([e for e in members if e.membership in ("leave", "ban")])
        summary["m.heroes"] = heroes
        return summary

    # -- invites and knocks --------------------------------------------------------------------------------
    async def _stripped_state(self, event_id: str, ignored: frozenset[str] = frozenset(),
                              ) -> list[dict[str, Any]] | None:
        """The stripped state of an invite or knock; None (left out) when the inviter is ignored: the
        spec says invites from ignored users are not sent to the client."""
        ev = await self.store.get_event(event_id)
        if ev is None or ev.sender in ignored:
            return None
        state = await self.store.get_state_group(ev.internal.state_group_after)
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        found = await self.store.get_events(ids)
        stripped: list[dict[str, Any]] = [
            {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": e.content}
            for e in (found[i] for i in ids if i in found)
        ]
        if ("m.room.create", "") not in state:  # an invite to a room on another server: its stripped state
            unsigned = ev.pdu.get("unsigned") or {}
            stripped = list(unsigned.get("invite_room_state") or unsigned.get("knock_room_state") or [])
        # The membership event itself in full: clients read the inviter and time from it.
        stripped.append(serialize_event(ev, include_room_id=False))
        return stripped

    # -- output --------------------------------------------------------------------------------------------
    async def _federation_format(self, config: SyncConfig, events: list[Event]) -> list[dict[str, Any]]:
        """`event_format: federation`: each event as its PDU (pruned if redacted), with its `event_id`
        (not part of the PDU from room version 3 on) and the client format's `unsigned` (age,
        transaction_id, redacted_because), as Synapse serves it."""
        client = await serialize_events(self.hs, events, config.device_id)
        out = []
        for ev, serialized in zip(events, client, strict=True):
            pdu = redact_pdu(ev.pdu, ev.room_version) if ev.internal.redacted_by else ev.pdu
            fed = {k: v for k, v in pdu.items() if k != "unsigned"}
            fed["event_id"] = ev.event_id
            fed["unsigned"] = serialized["unsigned"]
            out.append(fed)
        return out

    async def _serialize(self, config: SyncConfig, events: list[Event]) -> list[dict[str, Any]]:
        if not events:
            return []
        if config.filter.event_format == "federation":
            out = await self._federation_format(config, events)
        else:
            out = await serialize_events(self.hs, events, config.device_id, include_room_id=False)
        fields = config.filter.event_fields
        if fields is not None:
            out = [only_fields(o, fields) for o in out]
        return out


def _summary_inputs_changed(before: dict[StateKey, str], after: dict[StateKey, str]) -> bool:
    """Whether the members, name or canonical alias changed (so the room summary may have)."""
    for key, value in after.items():
        if key[0] in (MEMBER, "m.room.name", "m.room.canonical_alias") and before.get(key) != value:
            return True
    return False


def empty_join_entry(next_batch: str) -> dict[str, Any]:
    """A joined room's entry for a sync with no events in it (only account data or ephemeral)."""
    return {
        "timeline": {"events": [], "limited": False, "prev_batch": next_batch},
        "state": {"events": []},
        "account_data": {"events": []},
        "ephemeral": {"events": []},
        "summary": {},
        "unread_notifications": {"notification_count": 0, "highlight_count": 0},
    }
