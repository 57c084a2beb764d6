"""State resolution v2 (room versions 1-11) and v2.1 (room version 12).

When the DAG forks, every server has to compute the same room state from the states at the tips. The
algorithm replays the events the forks disagree about in an order every server derives identically from
the auth DAG (power first, then the power levels "mainline"), keeping only those the auth rules allow.

Room version 1 specifies a different, reset-prone algorithm; this module deliberately resolves v1 rooms
with v2 too: such rooms are legacy, v2 is strictly better at keeping state stable, and servers already
disagree on v1 rooms anyway.

v2.1 (room version 12) differs in two ways: the first iterative auth checks start from an empty state
map instead of the unconflicted state, and the *conflicted state subgraph* (events on auth paths between
conflicted events) joins the full conflicted set. Both make replays follow the auth chains rather than
possibly stale state from partial synchronisation.

Events are fetched lazily through `get_events`; events it does not return are treated as unknown and
left out. Auth events flagged ``event.internal.rejected`` are not used during iterative auth checks.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from hs.events.auth import (
    CREATE_KEY,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    POWER_LEVELS_KEY,
    AuthError,
    auth_types_for_event,
    check_auth_rules,
    get_user_power_level,
)
from hs.events.event import Event, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, StateResAlgorithm

GetEvents = Callable[[Iterable[str]], Awaitable[dict[str, Event]]]
GetAuthChain = Callable[[Iterable[str]], Awaitable[set[str]]]
StateIds = dict[StateKey, str]


async def resolve_state(
    room_version: RoomVersion | str,
    state_sets: list[dict[StateKey, str]],
    get_events: GetEvents,
    get_auth_chain: GetAuthChain | None = None,
) -> dict[StateKey, str]:
    """Resolve several room states (``(type, state_key) -> event_id``) into one.

    `get_events` returns the known events among the given IDs. `get_auth_chain` returns the union of the
    auth chains of the given events (their auth events, recursively, excluding the events themselves);
    without it auth chains are computed by walking ``auth_events`` through `get_events`.
    """
    rv = KNOWN_ROOM_VERSIONS[room_version] if isinstance(room_version, str) else room_version
    if not state_sets:
        return {}
    unconflicted, conflicted = separate_state(state_sets)
    if not conflicted:
        return unconflicted
    return await _Resolver(rv, get_events, get_auth_chain).resolve(state_sets, unconflicted, conflicted)


async def full_conflicted_set(
    room_version: RoomVersion | str,
    state_sets: list[dict[StateKey, str]],
    get_events: GetEvents,
    get_auth_chain: GetAuthChain | None = None,
) -> set[str]:
    """The full conflicted set of `state_sets` (exposed to inspect what a resolution will replay)."""
    rv = KNOWN_ROOM_VERSIONS[room_version] if isinstance(room_version, str) else room_version
    _, conflicted = separate_state(state_sets)
    if not conflicted:
        return set()
    return await _Resolver(rv, get_events, get_auth_chain).full_conflicted_set(state_sets, conflicted)


async def conflicted_state_subgraph(conflicted: Iterable[str], get_events: GetEvents) -> set[str]:
    """The v2.1 conflicted state subgraph: events on auth_events paths between conflicted events."""
    rv = KNOWN_ROOM_VERSIONS["12"]
    return await _Resolver(rv, get_events, None).conflicted_subgraph(set(conflicted))


def separate_state(state_sets: list[dict[StateKey, str]]) -> tuple[StateIds, set[str]]:
    """Split into the unconflicted state map (same event under a key in every set) and the conflicted
    state set (every event under a key the sets disagree on, including by omission)."""
    unconflicted: StateIds = {}
    conflicted: set[str] = set()
    for key in set().union(*state_sets):
        values = {state.get(key) for state in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = values.pop()  # type: ignore[assignment]
        else:
            conflicted.update(v for v in values if v is not None)
    return unconflicted, conflicted


def is_power_event(event: Event) -> bool:
    """Power levels, join rules, and kicks/bans: the events that can take abilities away."""
    if not event.is_state():
        return False
    if event.type in (POWER_LEVELS, JOIN_RULES):
        return True
    return (
        event.type == MEMBER
        and event.content.get("membership") in ("leave", "ban")
        and event.sender != event.state_key
    )


def is_rejected(event: Event) -> bool:
    """Whether the server recorded `event` as rejected (such auth events are not used for checks)."""
    return event.internal.rejected


def topological_sort(parents: Mapping[str, Collection[str]], key: Callable[[str], Any]) -> list[str]:
    """Kahn's algorithm over ``event -> auth events`` restricted to the nodes of `parents`, auth events
    first, choosing the smallest `key` among the ready events at every step (which yields the
    lexicographically smallest ordering). Malformed cycles are appended in `key` order at the end."""
    children: dict[str, list[str]] = {node: [] for node in parents}
    waiting: dict[str, int] = {}
    for node, node_parents in parents.items():
        inside = {p for p in node_parents if p in parents and p != node}
        waiting[node] = len(inside)
        for parent in inside:
            children[parent].append(node)
    ready = [(key(node), node) for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        ordered.append(node)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (key(child), child))
    if len(ordered) < len(parents):
        done = set(ordered)
        ordered += sorted((n for n in parents if n not in done), key=key)
    return ordered


class _Resolver:
    """One resolution: caches fetched events and runs the steps of the algorithm."""

    def __init__(self, rv: RoomVersion, get_events: GetEvents, get_auth_chain: GetAuthChain | None) -> None:
        self.rv = rv
        self._get_events = get_events
        self._get_auth_chain = get_auth_chain
        self._events: dict[str, Event] = {}
        self._missing: set[str] = set()

    @property
    def v2_1(self) -> bool:
        return self.rv.state_res == StateResAlgorithm.V2_1

    async def resolve(
        self, state_sets: list[StateIds], unconflicted: StateIds, conflicted: set[str]
    ) -> StateIds:
        """Steps 1-5 of the algorithm."""
        full = await self.full_conflicted_set(state_sets, conflicted)
        events = await self.fetch(full)
        power = {eid for eid, ev in events.items() if is_power_event(ev)}
        power_closure = power | (await self.auth_chain(power) & full)
        power_order = await self.reverse_topological_power_sort(power_closure)
        initial = {} if self.v2_1 else dict(unconflicted)
        partial = await self.iterative_auth_checks(initial, power_order)
        leftover = set(events) - power_closure
        mainline_order = await self.mainline_sort(leftover, partial.get(POWER_LEVELS_KEY))
        resolved = await self.iterative_auth_checks(partial, mainline_order)
        resolved.update(unconflicted)
        return resolved

    # -- fetching ------------------------------------------------------------------------------------

    async def fetch(self, event_ids: Iterable[str]) -> dict[str, Event]:
        """The known events among `event_ids`, asking `get_events` only for ones not seen yet."""
        ids = set(event_ids)
        wanted = ids - self._events.keys() - self._missing
        if wanted:
            found = await self._get_events(wanted)
            self._events.update({eid: ev for eid, ev in found.items() if eid in wanted})
            self._missing |= wanted - found.keys()
        return {eid: self._events[eid] for eid in ids if eid in self._events}

    async def auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        """Union of the auth chains of `event_ids` (excluding themselves unless reachable)."""
        ids = set(event_ids)
        if not ids:
            return set()
        if self._get_auth_chain is not None:
            return set(await self._get_auth_chain(ids))
        chain: set[str] = set()
        frontier = ids
        while frontier:
            found = await self.fetch(frontier)
            parents = {aid for ev in found.values() for aid in ev.auth_event_ids}
            frontier = parents - chain
            chain |= parents
        return chain

    async def _create_event(self, room_id: str) -> Event | None:
        """The v12 create event, whose ID the room ID is derived from."""
        create_id = "$" + room_id[1:]
        return (await self.fetch([create_id])).get(create_id)

    async def own_auth_events(self, event: Event) -> dict[StateKey, Event]:
        """The event's own (non-rejected) auth events by state key, plus the implied v12 create event."""
        found = await self.fetch(event.auth_event_ids)
        auth = {ev.state_tuple: ev for ev in found.values() if ev.is_state() and not is_rejected(ev)}
        if CREATE_KEY not in auth and self.rv.room_id_from_create_event:
            create = await self._create_event(event.room_id)
            if create is not None and not is_rejected(create):
                auth[CREATE_KEY] = create
        return auth

    # -- full conflicted set ------------------------------------------------------------------------

    async def full_conflicted_set(self, state_sets: list[StateIds], conflicted: set[str]) -> set[str]:
        """Conflicted state set ∪ auth difference (∪ conflicted state subgraph in v2.1), known events only."""
        full = conflicted | await self.auth_difference(state_sets)
        if self.v2_1:
            full |= await self.conflicted_subgraph(conflicted)
        return set(await self.fetch(full))

    async def auth_difference(self, state_sets: list[StateIds]) -> set[str]:
        """Events in some but not all of the states' full auth chains."""
        chains = [await self.auth_chain(state.values()) for state in state_sets]
        union: set[str] = set().union(*chains)
        return union - chains[0].intersection(*chains[1:])

    async def conflicted_subgraph(self, conflicted: set[str]) -> set[str]:
        """Events on an auth_events path from one conflicted event to another (endpoints included).

        Walk everything reachable from the conflicted events, then keep the events from which a
        conflicted event is reachable: exactly those lie on such a path.
        """
        graph: dict[str, list[str]] = {}
        frontier = set(conflicted)
        while frontier:
            found = await self.fetch(frontier)
            for eid in frontier:
                graph[eid] = found[eid].auth_event_ids if eid in found else []
            frontier = {p for eid in frontier for p in graph[eid]} - graph.keys()
        reaches: dict[str, bool] = {}
        for eid in topological_sort(graph, key=lambda e: e):
            reaches[eid] = eid in conflicted or any(reaches.get(p, False) for p in graph[eid])
        return {eid for eid, hit in reaches.items() if hit}

    # -- orderings ----------------------------------------------------------------------------------

    async def reverse_topological_power_sort(self, event_ids: set[str]) -> list[str]:
        """Auth events first; among ready events, higher sender power, then older, then smaller ID."""
        events = await self.fetch(event_ids)
        levels = {eid: await self.sender_power_level(ev) for eid, ev in events.items()}
        parents = {eid: ev.auth_event_ids for eid, ev in events.items()}
        return topological_sort(parents, key=lambda e: (-levels[e], events[e].origin_server_ts, e))

    async def sender_power_level(self, event: Event) -> int | float:
        """The sender's power level according to the event's own auth events."""
        return get_user_power_level(event.sender, await self.own_auth_events(event), self.rv)

    async def _auth_power_levels(self, event_id: str) -> str | None:
        """The m.room.power_levels event among the auth events of `event_id`, if any."""
        event = (await self.fetch([event_id])).get(event_id)
        if event is None:
            return None
        found = await self.fetch(event.auth_event_ids)
        for aid in event.auth_event_ids:
            auth_event = found.get(aid)
            if auth_event is not None and auth_event.state_key == "" and auth_event.type == POWER_LEVELS:
                return aid
        return None

    async def mainline_sort(self, event_ids: set[str], power_levels_id: str | None) -> list[str]:
        """Order by mainline position based on `power_levels_id` (events based on an older power levels
        event first), then origin_server_ts, then event ID."""
        mainline: list[str] = []
        current = power_levels_id
        while current is not None and current not in mainline:
            mainline.append(current)
            current = await self._auth_power_levels(current)
        index = {eid: i for i, eid in enumerate(mainline)}
        positions = {eid: await self._mainline_position(eid, index) for eid in event_ids}
        events = await self.fetch(event_ids)
        return sorted(events, key=lambda e: (-positions[e], events[e].origin_server_ts, e))

    async def _mainline_position(self, event_id: str, index: dict[str, int]) -> float:
        """Index in the mainline of the closest power levels ancestor on it; infinity if none is."""
        seen: set[str] = set()
        current = await self._auth_power_levels(event_id)
        while current is not None and current not in seen:
            if current in index:
                return index[current]
            seen.add(current)
            current = await self._auth_power_levels(current)
        return math.inf

    # -- iterative auth checks ----------------------------------------------------------------------

    async def iterative_auth_checks(self, state: StateIds, ordered: list[str]) -> StateIds:
        """Apply each event in order to a copy of `state` if the auth rules allow it there. Keys the
        rules need but `state` lacks come from the event's own auth events."""
        state = dict(state)
        for eid in ordered:
            event = (await self.fetch([eid])).get(eid)
            if event is None or not event.is_state():
                continue
            auth = await self.own_auth_events(event)
            needed = auth_types_for_event(
                self.rv, event.type, event.sender, event.state_key, event.content, for_checking=True
            )
            from_state = await self.fetch(state[key] for key in needed if key in state)
            for key in needed:
                if key in state and state[key] in from_state:
                    auth[key] = from_state[state[key]]
            try:
                check_auth_rules(event, auth)
            except AuthError:
                continue
            state[event.state_tuple] = eid
        return state
