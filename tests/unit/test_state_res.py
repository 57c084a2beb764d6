"""State resolution v2 / v2.1 (hs.state.resolution) on small room DAGs.

A `Dag` builds a room event by event: the state before each event is the resolution of the states
after its prev events (the way a server computes it), its auth events are selected from that state and
it must pass the auth rules there. Scenarios then fork the DAG and check the resolved state.

Every scenario runs with auth chains computed by the resolver (walking auth_events) and with a
`get_auth_chain` callback, since servers use both paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from hs.events.auth import (
    CREATE_KEY,
    auth_events_for_check,
    auth_types_for_event,
    check_auth_rules,
)
from hs.events.event import Event, JsonDict, StateKey
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat
from hs.state.resolution import (
    conflicted_state_subgraph,
    full_conflicted_set,
    resolve_state,
    separate_state,
    topological_sort,
)

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CHARLIE = "@charlie:c.test"
EVELYN = "@evelyn:e.test"

MEMBER = "m.room.member"
PL_KEY: StateKey = ("m.room.power_levels", "")
JR_KEY: StateKey = ("m.room.join_rules", "")
TOPIC_KEY: StateKey = ("m.room.topic", "")

StateIds = dict[StateKey, str]

# v1 rooms are resolved with the v2 algorithm; v12 uses v2.1.
VERSIONS = ("1", "10", "11", "12")


class Dag:
    """An in-memory room: events, the state after each event, and the resolver's callbacks."""

    def __init__(self, version: str, use_auth_chain_callback: bool) -> None:
        self.version = version
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.use_callback = use_auth_chain_callback
        self.events: dict[str, Event] = {}
        self.state_after: dict[str, StateIds] = {}
        self.ts = 0
        self.last = ""
        self.room_id = "!CREATE" if self.rv.room_id_from_create_event else "!room:a.test"

    # -- callbacks handed to the resolver -------------------------------------------------------------

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        return {eid: self.events[eid] for eid in event_ids if eid in self.events}

    async def get_auth_chain(self, event_ids: Iterable[str]) -> set[str]:
        chain: set[str] = set()
        todo = [aid for eid in event_ids if eid in self.events for aid in self.events[eid].auth_event_ids]
        while todo:
            eid = todo.pop()
            if eid not in chain:
                chain.add(eid)
                todo += self.events[eid].auth_event_ids if eid in self.events else []
        return chain

    async def resolve(self, state_sets: list[StateIds], version: str | None = None) -> StateIds:
        return await resolve_state(
            KNOWN_ROOM_VERSIONS[version or self.version],
            state_sets,
            self.get_events,
            self.get_auth_chain if self.use_callback else None,
        )

    # -- building -------------------------------------------------------------------------------------

    def refs(self, ids: list[str]) -> list[Any]:
        if self.rv.event_format == EventFormat.V1:
            return [[eid, {"sha256": "x"}] for eid in ids]
        return ids

    def power_levels(self, users: dict[str, int] | None = None) -> JsonDict:
        """Power levels content: the creator at 100 except in v12 where creators cannot be listed."""
        base = {} if self.rv.privileged_creators else {ALICE: 100}
        return {"users": {**base, **(users or {})}}

    async def add(
        self,
        name: str,
        type: str,
        sender: str,
        content: JsonDict,
        state_key: str | None = "",
        prev: list[str] | None = None,
        ts: int | None = None,
    ) -> str:
        """Append an event after `prev` (default: the last event) and return its ID."""
        prev_ids = [f"${p}" for p in prev] if prev is not None else ([self.last] if self.last else [])
        state = await self.resolve([self.state_after[p] for p in prev_ids]) if prev_ids else {}
        self.ts += 10
        pdu: JsonDict = {
            "type": type,
            "sender": sender,
            "content": content,
            "prev_events": self.refs(prev_ids),
            "depth": len(self.events) + 1,
            "origin_server_ts": self.ts if ts is None else ts,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if type != "m.room.create" or not self.rv.room_id_from_create_event:
            pdu["room_id"] = self.room_id
        keys = auth_types_for_event(self.rv, type, sender, state_key, content)
        pdu["auth_events"] = self.refs([state[k] for k in sorted(keys) if k in state])
        event = Event(pdu, self.rv, event_id=f"${name}")
        state_events = {k: self.events[v] for k, v in state.items()}
        check_auth_rules(event, auth_events_for_check(event, state_events))  # the DAG must be valid
        self.events[event.event_id] = event
        after = dict(state)
        if state_key is not None:
            after[event.state_tuple] = event.event_id
        self.state_after[event.event_id] = after
        self.last = event.event_id
        return event.event_id

    async def member(
        self, name: str, target: str, membership: str, sender: str | None = None, **kw: Any
    ) -> str:
        return await self.add(name, MEMBER, sender or target, {"membership": membership}, target, **kw)

    async def pl(self, name: str, sender: str, users: dict[str, int], **kw: Any) -> str:
        return await self.add(name, "m.room.power_levels", sender, self.power_levels(users), **kw)

    async def topic(self, name: str, sender: str, topic: str, **kw: Any) -> str:
        return await self.add(name, "m.room.topic", sender, {"topic": topic}, **kw)

    async def setup(self) -> None:
        """Alice's public room with Bob and Charlie joined: CREATE IMA IPOWER IJR IMB IMC."""
        create: JsonDict = {"room_version": self.version}
        if not self.rv.implicit_room_creator:
            create["creator"] = ALICE
        await self.add("CREATE", "m.room.create", ALICE, create)
        await self.member("IMA", ALICE, "join")
        await self.pl("IPOWER", ALICE, {})
        await self.add("IJR", "m.room.join_rules", ALICE, {"join_rule": "public"})
        await self.member("IMB", BOB, "join")
        await self.member("IMC", CHARLIE, "join")

    def state(self, name: str) -> StateIds:
        return self.state_after[f"${name}"]


@pytest.fixture(params=[False, True], ids=["walk-auth-events", "auth-chain-callback"])
def use_callback(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def new_dag(version: str, use_callback: bool) -> Dag:
    dag = Dag(version, use_callback)
    await dag.setup()
    return dag


# -- conflicting power level changes -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_ban_vs_power_levels(version: str, use_callback: bool) -> None:
    """Alice bans Bob while Bob, a moderator on the other fork, edits the power levels: the ban is
    ordered first (Alice has more power) and Bob's edit no longer passes auth."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.member("MB", BOB, "ban", sender=ALICE, prev=["PA"])
    await dag.pl("PB", BOB, {BOB: 50, CHARLIE: 50}, prev=["PA"])
    resolved = await dag.resolve([dag.state("MB"), dag.state("PB")])
    assert resolved[PL_KEY] == "$PA"
    assert resolved[(MEMBER, BOB)] == "$MB"
    assert resolved[(MEMBER, CHARLIE)] == "$IMC"


@pytest.mark.parametrize("version", VERSIONS)
async def test_demotion_beats_concurrent_power_levels_change(version: str, use_callback: bool) -> None:
    """Alice demotes Bob while Bob promotes Charlie: Bob's change is authorised against the demotion."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.pl("PC", ALICE, {BOB: 0}, prev=["PA"], ts=500)
    await dag.pl("PB", BOB, {BOB: 50, CHARLIE: 50}, prev=["PA"], ts=900)
    resolved = await dag.resolve([dag.state("PC"), dag.state("PB")])
    assert resolved[PL_KEY] == "$PC"


@pytest.mark.parametrize("version", VERSIONS)
async def test_power_ordering_replays_higher_power_first(version: str, use_callback: bool) -> None:
    """Both changes are valid: Alice's (more power) is replayed first even though it is newer, so Bob's
    older but still-authorised change is applied last and wins. Ordering by timestamp alone would pick
    Alice's."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.pl("PC", ALICE, {BOB: 50, CHARLIE: 10}, prev=["PA"], ts=900)
    await dag.pl("PB", BOB, {BOB: 50, CHARLIE: 20}, prev=["PA"], ts=500)
    resolved = await dag.resolve([dag.state("PC"), dag.state("PB")])
    assert resolved[PL_KEY] == "$PB"
    # The same answer whichever order the state sets come in.
    assert await dag.resolve([dag.state("PB"), dag.state("PC")]) == resolved


# -- memberships -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("join_first", [True, False])
async def test_ban_vs_join(version: str, use_callback: bool, join_first: bool) -> None:
    """Evelyn joins a public room while Alice bans her: the ban is a power event, replayed first, and
    the join fails against it whatever the timestamps say."""
    dag = await new_dag(version, use_callback)
    await dag.member("MB", EVELYN, "ban", sender=ALICE, prev=["IMC"], ts=200 if join_first else 100)
    await dag.member("ME", EVELYN, "join", prev=["IMC"], ts=100 if join_first else 200)
    resolved = await dag.resolve([dag.state("MB"), dag.state("ME")])
    assert resolved[(MEMBER, EVELYN)] == "$MB"


@pytest.mark.parametrize("version", VERSIONS)
async def test_join_rules_evasion(version: str, use_callback: bool) -> None:
    """Alice makes the room invite-only while Evelyn joins it: the join rules change wins and Evelyn's
    join, re-checked against it, is dropped."""
    dag = await new_dag(version, use_callback)
    await dag.add("JR", "m.room.join_rules", ALICE, {"join_rule": "invite"}, prev=["IMC"])
    await dag.member("ME", EVELYN, "join", prev=["IMC"])
    resolved = await dag.resolve([dag.state("JR"), dag.state("ME")])
    assert resolved[JR_KEY] == "$JR"
    assert (MEMBER, EVELYN) not in resolved


@pytest.mark.parametrize("version", VERSIONS)
async def test_topic_reset(version: str, use_callback: bool) -> None:
    """Bob, a moderator, sets the topic while Alice bans him: his topic no longer passes auth and the
    older topic stays."""
    dag = await new_dag(version, use_callback)
    await dag.topic("T1", ALICE, "first")
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.topic("T2", BOB, "bob's", prev=["PA"])
    await dag.member("MB", BOB, "ban", sender=ALICE, prev=["PA"])
    resolved = await dag.resolve([dag.state("T2"), dag.state("MB")])
    assert resolved[TOPIC_KEY] == "$T1"
    assert resolved[PL_KEY] == "$PA"
    assert resolved[(MEMBER, BOB)] == "$MB"


# -- auth difference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_auth_difference_replays_intermediate_power_levels(version: str, use_callback: bool) -> None:
    """Resolving a state against an older one: Bob's power levels change needs Alice's promotion PA,
    which is in only one side's auth chains. The auth difference brings PA into the replay, before P2."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.pl("P2", BOB, {BOB: 50, CHARLIE: 10})
    full = await full_conflicted_set(dag.rv, [dag.state("P2"), dag.state("IMC")], dag.get_events)
    assert {"$IPOWER", "$PA", "$P2"} <= full
    # IMB is in the state on both sides but only in one side's auth chains (P2 cites it): the spec's
    # auth chains exclude the state events themselves, so it is part of the difference too.
    assert "$IMB" in full
    resolved = await dag.resolve([dag.state("P2"), dag.state("IMC")])
    assert resolved[PL_KEY] == "$P2"


@pytest.mark.parametrize("version", VERSIONS)
async def test_auth_chain_of_power_events_is_replayed_with_them(version: str, use_callback: bool) -> None:
    """Evelyn (level 50) is kicked on one fork; on the other she updates her join (E2) and then the
    power levels (P). A partially synced state set pairs P with the kick. E2 is in the auth difference
    and in P's auth chain, so it is replayed just before P (re-joining Evelyn over the kick in the
    unconflicted state) and P is accepted; replaying E2 only after P would reject P."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA", ALICE, {EVELYN: 50})
    await dag.member("EJ0", EVELYN, "join")
    await dag.member("KICK", EVELYN, "leave", sender=ALICE, prev=["EJ0"])
    await dag.add("E2", MEMBER, EVELYN, {"membership": "join", "displayname": "E"}, EVELYN, prev=["EJ0"])
    await dag.pl("P", EVELYN, {EVELYN: 50, CHARLIE: 10})
    stale = {**dag.state("P"), (MEMBER, EVELYN): "$KICK"}
    resolved = await dag.resolve([stale, dag.state("KICK")])
    assert resolved[PL_KEY] == "$P"
    assert resolved[(MEMBER, EVELYN)] == "$KICK"


# -- mainline ordering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_mainline_ordering_beats_timestamps(version: str, use_callback: bool) -> None:
    """A topic sent under a newer power levels event (later on the mainline) is applied after one sent
    under an older power levels event, even though its timestamp is older."""
    dag = await new_dag(version, use_callback)
    await dag.pl("PA1", ALICE, {BOB: 50})
    await dag.topic("TOLD", ALICE, "old", prev=["PA1"], ts=3000)
    await dag.pl("PA2", ALICE, {BOB: 60}, prev=["PA1"], ts=1000)
    await dag.topic("TNEW", ALICE, "new", prev=["PA2"], ts=2000)
    resolved = await dag.resolve([dag.state("TOLD"), dag.state("TNEW")])
    assert resolved[PL_KEY] == "$PA2"
    assert resolved[TOPIC_KEY] == "$TNEW"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("ts_a", "ts_b", "winner"),
    [(100, 200, "$TB"), (200, 100, "$TA"), (100, 100, "$TB")],  # equal timestamps: larger event ID last
)
async def test_mainline_tie_breaks(
    version: str, use_callback: bool, ts_a: int, ts_b: int, winner: str
) -> None:
    """Same mainline position: the newer timestamp is applied last, then the larger event ID."""
    dag = await new_dag(version, use_callback)
    await dag.topic("TA", ALICE, "a", prev=["IMC"], ts=ts_a)
    await dag.topic("TB", ALICE, "b", prev=["IMC"], ts=ts_b)
    resolved = await dag.resolve([dag.state("TA"), dag.state("TB")])
    assert resolved[TOPIC_KEY] == winner


# -- v2 versus v2.1 --------------------------------------------------------------------------------------


async def test_v2_1_starts_from_empty_state(use_callback: bool) -> None:
    """Bob (moderator) sets a topic and is then banned; concurrently with a later name change, Alice
    sets another topic with an older timestamp. v2 replays the conflicted topics on top of the
    unconflicted state, where Bob is already banned, so his topic fails; v2.1 replays them on their own
    auth events (Bob was joined when he set it), so his newer topic is kept."""
    results = {}
    for version in ("11", "12"):
        dag = await new_dag(version, use_callback)
        await dag.pl("PA", ALICE, {BOB: 50})
        await dag.topic("TB", BOB, "bob's", ts=1000)
        await dag.member("BAN", BOB, "ban", sender=ALICE, ts=1010)
        await dag.add("NAME", "m.room.name", ALICE, {"name": "n"}, prev=["BAN"], ts=1020)
        await dag.topic("TA", ALICE, "alice's", prev=["BAN"], ts=500)
        resolved = await dag.resolve([dag.state("NAME"), dag.state("TA")])
        assert resolved[(MEMBER, BOB)] == "$BAN"
        assert resolved[("m.room.name", "")] == "$NAME"
        results[version] = resolved[TOPIC_KEY]
    assert results == {"11": "$TA", "12": "$TB"}


async def test_join_rules_conflict_with_stale_state(use_callback: bool) -> None:
    """MSC4297 problem A. Alice changes the join rules twice and then leaves; a server that synced
    partially holds the older join rules. Both forks agree Alice left, so v2 replays both join rules
    events on a state where she is not a member: both fail and the room loses its join rules. v2.1
    replays them on their auth events and keeps the latest."""
    results = {}
    for version in ("11", "12"):
        dag = await new_dag(version, use_callback)
        await dag.add("JR1", "m.room.join_rules", ALICE, {"join_rule": "invite"})
        await dag.add("JR2", "m.room.join_rules", ALICE, {"join_rule": "public"})
        await dag.member("LEAVE", ALICE, "leave")
        correct = dag.state("LEAVE")
        stale = {**correct, JR_KEY: "$JR1"}
        resolved = await dag.resolve([correct, stale])
        assert resolved[(MEMBER, ALICE)] == "$LEAVE"
        results[version] = resolved.get(JR_KEY)
    assert results == {"11": None, "12": "$JR2"}


async def test_conflicted_subgraph_prevents_power_levels_reset(use_callback: bool) -> None:
    """MSC4297 problem B. Alice promotes Bob (P1), Bob promotes Charlie (P2), Charlie sets the topic. A
    partially synced state still has the initial power levels. Every side has P1 in its auth chains, so
    it is not in the auth difference: v2 replays only IPOWER and P2, and P2 fails because Bob was never
    promoted (a state reset). v2.1 adds P1, which lies on the auth path from P2 to IPOWER."""
    results = {}
    for version in ("11", "12"):
        dag = await new_dag(version, use_callback)
        await dag.pl("P1", ALICE, {BOB: 50})
        await dag.pl("P2", BOB, {BOB: 50, CHARLIE: 50})
        await dag.topic("T", CHARLIE, "charlie's")
        correct = dag.state("T")
        stale = {**correct, PL_KEY: "$IPOWER"}
        callback = dag.get_auth_chain if use_callback else None
        full = await full_conflicted_set(dag.rv, [correct, stale], dag.get_events, callback)
        # v2.1 also adds every event on an auth path from P2 down to IPOWER: P1, and Bob's join IMB
        # with the join rules IJR it cites, both authorised by IPOWER.
        on_paths = {"$P1", "$IMB", "$IJR"} if version == "12" else set()
        expected_full = {"$IPOWER", "$P2"} | on_paths
        assert full == expected_full
        resolved = await dag.resolve([correct, stale])
        assert resolved[TOPIC_KEY] == "$T"
        results[version] = resolved[PL_KEY]
    assert results == {"11": "$IPOWER", "12": "$P2"}


# -- building blocks -------------------------------------------------------------------------------------


def _bare(event_id: str, auth: list[str]) -> Event:
    pdu = {
        "type": "m.room.member",
        "state_key": event_id,
        "sender": ALICE,
        "room_id": "!r",
        "auth_events": auth,
    }
    return Event(pdu, KNOWN_ROOM_VERSIONS["12"], event_id=event_id)


async def test_conflicted_state_subgraph() -> None:
    """Only events on paths between conflicted events belong to the subgraph (endpoints included)."""
    graph = {
        "A": _bare("A", ["B", "E"]),
        "B": _bare("B", ["C"]),
        "C": _bare("C", ["D"]),
        "D": _bare("D", []),
        "E": _bare("E", ["D"]),
        "F": _bare("F", ["C"]),  # descends from C but is not an ancestor of anything conflicted
    }

    async def get_events(ids: Iterable[str]) -> dict[str, Event]:
        return {i: graph[i] for i in ids if i in graph}

    assert await conflicted_state_subgraph({"A", "C"}, get_events) == {"A", "B", "C"}
    assert await conflicted_state_subgraph({"A", "D"}, get_events) == {"A", "B", "C", "D", "E"}
    assert await conflicted_state_subgraph({"A"}, get_events) == {"A"}
    assert await conflicted_state_subgraph({"F", "B"}, get_events) == {"F", "B"}


def test_topological_sort_picks_smallest_ready_event() -> None:
    """Kahn's algorithm: auth events come first, ties broken by the key (lowest first)."""
    parents = {"a": [], "b": [], "c": ["a"], "d": ["b", "c"]}
    assert topological_sort(parents, key=lambda e: e) == ["a", "b", "c", "d"]
    assert topological_sort(parents, key=lambda e: {"a": 3, "b": 1, "c": 2, "d": 0}[e]) == [
        "b",
        "a",
        "c",
        "d",
    ]


def test_separate_state() -> None:
    s1 = {("a", ""): "$1", ("b", ""): "$2", ("c", ""): "$3"}
    s2 = {("a", ""): "$1", ("b", ""): "$4"}
    unconflicted, conflicted = separate_state([s1, s2])
    assert unconflicted == {("a", ""): "$1"}
    assert conflicted == {"$2", "$3", "$4"}


@pytest.mark.parametrize("version", VERSIONS)
async def test_trivial_resolutions(version: str, use_callback: bool) -> None:
    dag = await new_dag(version, use_callback)
    state = dag.state("IMC")
    assert await dag.resolve([]) == {}
    assert await dag.resolve([state]) == state
    assert await dag.resolve([state, dict(state)]) == state
    assert CREATE_KEY in state


@pytest.mark.parametrize("version", VERSIONS)
async def test_unknown_events_are_left_out(version: str, use_callback: bool) -> None:
    """A conflicted event the server does not have cannot be replayed; the known ones still resolve."""
    dag = await new_dag(version, use_callback)
    await dag.topic("T", ALICE, "t", prev=["IMC"])
    resolved = await dag.resolve([dag.state("T"), {**dag.state("IMC"), TOPIC_KEY: "$missing"}])
    assert resolved[TOPIC_KEY] == "$T"
