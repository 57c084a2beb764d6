"""State resolution on forks like the ones two servers make when their users act at the same moment
(the federation fork tests, tests/federation/test_forks.py, see these end to end): a table of cases,
each a DAG built with tests/unit/test_state_res.py's `Dag`, the state sets to resolve, and what must
come out, whichever order the state sets come in.

The rows complement test_state_res.py: a demoted user's state change (and its return once the user is
promoted again), a message from a user banned on the other fork, unconflicted entries that resolution
keeps without re-checking them, and an auth difference that brings an intermediate power levels event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from hs.events.auth import AuthError, auth_events_for_check, check_auth_rules
from tests.unit.test_state_res import (
    ALICE,
    BOB,
    CHARLIE,
    MEMBER,
    PL_KEY,
    TOPIC_KEY,
    Dag,
    StateIds,
    new_dag,
)

NAME_KEY = ("m.room.name", "")
VERSIONS = ("1", "10", "11", "12")


@pytest.fixture(params=[False, True], ids=["walk-auth-events", "auth-chain-callback"])
def use_callback(request: pytest.FixtureRequest) -> bool:
    """Auth chains computed by the resolver, or given by a callback (servers use both)."""
    return bool(request.param)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Dag], Awaitable[None]]
    # The events (by name) whose states after are resolved.
    heads: tuple[str, ...]
    # state key -> the event (by name) it must resolve to, or None for "absent".
    expect: dict[tuple[str, str], str | None]


async def _demotion_vs_topic(dag: Dag) -> None:
    """Bob (50) sets the topic while Alice demotes him to 0."""
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.topic("T0", ALICE, "alice's")
    await dag.pl("DEMOTE", ALICE, {BOB: 0}, prev=["T0"])
    await dag.topic("TB", BOB, "bob's", prev=["T0"])


async def _demotion_then_promotion(dag: Dag) -> None:
    """As above, then Alice promotes Bob again on her fork (not having seen his topic): Bob's topic,
    still a forward extremity on his server, now passes against the resolved power levels."""
    await _demotion_vs_topic(dag)
    await dag.pl("PROMOTE", ALICE, {BOB: 50}, prev=["DEMOTE"])


async def _ban_vs_message(dag: Dag) -> None:
    """Alice bans Bob while Bob sends a message; then Charlie's name change on Bob's fork."""
    await dag.member("BAN", BOB, "ban", sender=ALICE, prev=["IMC"])
    await dag.add("MSG", "m.room.message", BOB, {"body": "hi"}, state_key=None, prev=["IMC"])
    await dag.add("NAME", "m.room.name", ALICE, {"name": "n"}, prev=["MSG"])


async def _unconflicted_kept(dag: Dag) -> None:
    """Bob's topic is in both forks' states (set before the fork); one fork demotes him and the other
    adds a name: the topic is unconflicted and stays, though Bob could no longer set it."""
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.topic("TB", BOB, "bob's")
    await dag.pl("DEMOTE", ALICE, {BOB: 0}, prev=["TB"])
    await dag.add("NAME", "m.room.name", ALICE, {"name": "n"}, prev=["TB"])


async def _only_one_side(dag: Dag) -> None:
    """A state key set on one fork only (conflicted: missing from the other state) is kept when it
    passes auth against the resolved state."""
    await dag.pl("PA", ALICE, {BOB: 50})
    await dag.topic("TB", BOB, "bob's", prev=["PA"])
    await dag.member("IMC2", CHARLIE, "leave", prev=["PA"])


async def _auth_difference(dag: Dag) -> None:
    """Bob's power levels change P2 needs Alice's promotion PA, which is in P2's auth chain and not in
    the other (older) state's: the auth difference replays PA first, so P2 passes; Charlie's older
    topic stands on the other fork."""
    await dag.topic("TC", ALICE, "old", prev=["IMC"])
    await dag.pl("PA", ALICE, {BOB: 50}, prev=["IMC"])
    await dag.pl("P2", BOB, {BOB: 50, CHARLIE: 10})


CASES = [
    Case("demotion-vs-topic", _demotion_vs_topic, ("DEMOTE", "TB"), {PL_KEY: "DEMOTE", TOPIC_KEY: "T0"}),
    Case("demotion-then-promotion", _demotion_then_promotion, ("PROMOTE", "TB"),
         {PL_KEY: "PROMOTE", TOPIC_KEY: "TB"}),
    Case("ban-vs-message", _ban_vs_message, ("BAN", "NAME"), {(MEMBER, BOB): "BAN", NAME_KEY: "NAME"}),
    Case("unconflicted-kept", _unconflicted_kept, ("DEMOTE", "NAME"),
         {PL_KEY: "DEMOTE", TOPIC_KEY: "TB", NAME_KEY: "NAME"}),
    Case("one-side-only", _only_one_side, ("TB", "IMC2"),
         {TOPIC_KEY: "TB", (MEMBER, CHARLIE): "IMC2", PL_KEY: "PA"}),
    Case("auth-difference", _auth_difference, ("TC", "P2"), {PL_KEY: "P2", TOPIC_KEY: "TC"}),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fork_resolves(case: Case, version: str, use_callback: bool) -> None:
    dag = await new_dag(version, use_callback)
    await case.build(dag)
    sets = [dag.state(h) for h in case.heads]
    resolved = await dag.resolve(sets)
    for key, name in case.expect.items():
        assert resolved.get(key) == (None if name is None else f"${name}"), (key, resolved.get(key))
    assert await dag.resolve(sets[::-1]) == resolved
    # Resolving a resolution with either input changes nothing (the servers' next events do this).
    for s in sets:
        assert await dag.resolve([resolved, s]) == resolved


def _allowed(dag: Dag, event_name: str, state: StateIds) -> bool:
    event = dag.events[f"${event_name}"]
    try:
        check_auth_rules(event, auth_events_for_check(event, {k: dag.events[v] for k, v in state.items()}))
    except AuthError:
        return False
    return True


@pytest.mark.parametrize("version", VERSIONS)
async def test_message_from_a_user_banned_on_the_other_fork(version: str, use_callback: bool) -> None:
    """A message is no state: resolution does not drop it, but a server that has the ban in its current
    state soft-fails it (it passes against the state before it, not against the resolved state)."""
    dag = await new_dag(version, use_callback)
    await _ban_vs_message(dag)
    before_msg = dag.state("IMC")
    resolved = await dag.resolve([dag.state("BAN"), dag.state("NAME")])
    assert _allowed(dag, "MSG", before_msg)
    assert not _allowed(dag, "MSG", resolved)
