"""Forks in a room's DAG across servers, against a real Synapse and a second hs: both sides send state
and messages at the same moment, so each builds on its own heads and receives the other's events on
prev events it has moved past. Both must reach the same current state (same event IDs), and the
DAG must merge: later events from either side name both branches and reach the other side.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.federation.client import TlsClient, unique, user
from tests.federation.test_rooms import text, wait_for_event, wait_joined

ROUNDS = 4
CONVERGE_TIMEOUT = 20.0


async def state_ids(client: TlsClient, room_id: str) -> dict[tuple[str, str], str]:
    status, body = await client.request("GET", f"/rooms/{room_id}/state")
    assert status == 200, body
    return {(e["type"], e["state_key"]): e["event_id"] for e in body}


async def converged(a: TlsClient, b: TlsClient, room_id: str, timeout: float = CONVERGE_TIMEOUT,
                    ) -> dict[tuple[str, str], str]:
    """Poll both servers' current state until it is the same map of event IDs; fail with the difference."""
    deadline = time.monotonic() + timeout
    while True:
        sa, sb = await state_ids(a, room_id), await state_ids(b, room_id)
        if sa == sb:
            return sa
        if time.monotonic() > deadline:
            diff = {k: (sa.get(k), sb.get(k)) for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}
            contents = {k: (await _content(a, room_id, *k), await _content(b, room_id, *k)) for k in diff}
            raise AssertionError(f"state did not converge within {timeout}s: {diff}; contents {contents}")
        await asyncio.sleep(0.3)


async def _content(client: TlsClient, room_id: str, etype: str, state_key: str) -> Any:
    status, body = await client.request("GET", f"/rooms/{room_id}/state/{etype}/{state_key}")
    return body if status == 200 else status


async def put_state(client: TlsClient, room_id: str, etype: str, state_key: str, content: Any) -> str:
    status, body = await client.request("PUT", f"/rooms/{room_id}/state/{etype}/{state_key}", content)
    assert status == 200, body
    return str(body["event_id"])


async def racing_put_state(client: TlsClient, room_id: str, etype: str, state_key: str, content: Any) -> None:
    """A state event that loses the race if the other side's event already arrived (then 403)."""
    status, body = await client.request("PUT", f"/rooms/{room_id}/state/{etype}/{state_key}", content)
    assert status in (200, 403), body


async def send_text(client: TlsClient, room_id: str, body: str) -> str:
    status, answer = await client.request("PUT", f"/rooms/{room_id}/send/m.room.message/{unique('t')}",
                                          {"msgtype": "m.text", "body": body})
    assert status == 200, answer
    return str(answer["event_id"])


async def message_bodies(client: TlsClient, room_id: str) -> set[str]:
    """The bodies of every message in the room's timeline as `client` pages back through it."""
    bodies: set[str] = set()
    params = {"dir": "b", "limit": "100"}
    for _ in range(50):
        status, page = await client.request("GET", f"/rooms/{room_id}/messages", params=params)
        assert status == 200, page
        bodies |= {e["content"].get("body") for e in page["chunk"] if e.get("type") == "m.room.message"}
        if not page["chunk"] or "end" not in page:
            break
        params = {**params, "from": page["end"]}
    return bodies


async def merge(a: TlsClient, b: TlsClient, room_id: str, tag: str) -> None:
    """A message from each side in turn, each seen by the other: each side's next event names its
    forward extremities as prev events, so the other learns every branch it has (a soft-failed event,
    which only its sender's server builds on, included)."""
    await send_text(b, room_id, f"{tag}: from b")
    await wait_for_event(a, room_id, text(f"{tag}: from b"))
    await send_text(a, room_id, f"{tag}: from a")
    await wait_for_event(b, room_id, text(f"{tag}: from a"))


async def shared_room(local: Any, remote_server: Any, **extra_power: int) -> tuple[TlsClient, TlsClient, str]:
    """alice (on hs) creates a public room (v12: she is its creator, above every power level) where bob
    (on the remote server) has power 100; bob joins."""
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    assert alice.user_id and bob.user_id
    room_id = await alice.create_room(preset="public_chat", name="forks", power_level_content_override={
        "users": {bob.user_id: 100, **extra_power}})
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, (body, remote_server.log_tail(40))
    await wait_joined(alice, room_id, bob.user_id)
    return alice, bob, room_id


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_concurrent_state_and_messages_converge(make_fed_hs: Any, remote_server: Any, engine: str) -> None:
    """On hs's two database engines (PostgreSQL persists linear batches another way)."""
    local = await make_fed_hs(engine)
    alice, bob, room_id = await shared_room(local, remote_server)
    for r in range(ROUNDS):
        await asyncio.gather(
            put_state(alice, room_id, "m.room.topic", "", {"topic": f"alice {r}"}),
            put_state(bob, room_id, "m.room.topic", "", {"topic": f"bob {r}"}),
            put_state(alice, room_id, "org.example.fork", f"alice-{r}", {"r": r}),
            put_state(bob, room_id, "org.example.fork", f"bob-{r}", {"r": r}),
            send_text(alice, room_id, f"alice says {r}"),
            send_text(bob, room_id, f"bob says {r}"),
        )
    state = await converged(alice, bob, room_id)
    for r in range(ROUNDS):
        assert ("org.example.fork", f"alice-{r}") in state and ("org.example.fork", f"bob-{r}") in state
    # Every message reached the other side.
    for r in range(ROUNDS):
        await wait_for_event(bob, room_id, text(f"alice says {r}"))
        await wait_for_event(alice, room_id, text(f"bob says {r}"))
    # The DAG merges: later events from either side are seen by the other, and the state still agrees.
    from_alice = await send_text(alice, room_id, "alice after the forks")
    from_bob = await send_text(bob, room_id, "bob after the forks")
    assert (await wait_for_event(bob, room_id, text("alice after the forks")))["event_id"] == from_alice
    assert (await wait_for_event(alice, room_id, text("bob after the forks")))["event_id"] == from_bob
    # A last state event from each side, one after the other: both sides end on it.
    last = await put_state(alice, room_id, "m.room.topic", "", {"topic": "settled"})
    state = await converged(alice, bob, room_id)
    assert state[("m.room.topic", "")] == last
    # hs built on several heads and merged them: it ends with few forward extremities.
    extremities = await local.hs.event_store.get_forward_extremities(room_id)
    assert len(extremities) <= 2, extremities


async def test_ban_races_a_topic_change(make_fed_hs: Any, remote_server: Any) -> None:
    """alice (hs, power 100) bans carol (remote, power 50) while carol changes the topic: both sides
    agree on the state afterwards, carol banned on both."""
    local = await make_fed_hs()
    carol = await user(remote_server, unique("carol"))
    assert carol.user_id
    alice, bob, room_id = await shared_room(local, remote_server, **{carol.user_id: 50})
    status, body = await carol.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    await wait_joined(alice, room_id, carol.user_id)
    await converged(alice, bob, room_id)

    async def ban() -> None:
        status, body = await alice.request("POST", f"/rooms/{room_id}/ban", {"user_id": carol.user_id})
        assert status == 200, body

    await asyncio.gather(ban(), racing_put_state(carol, room_id, "m.room.topic", "", {"topic": "carol's topic"}))
    await merge(alice, bob, room_id, "after the ban")
    state = await converged(alice, bob, room_id)
    status, member = await alice.request("GET", f"/rooms/{room_id}/state/m.room.member/{carol.user_id}")
    assert status == 200 and member["membership"] == "ban", member
    status, member = await bob.request("GET", f"/rooms/{room_id}/state/m.room.member/{carol.user_id}")
    assert status == 200 and member["membership"] == "ban", member
    # The ban is a power event: resolved first, it leaves carol's topic without a sender in the room.
    if ("m.room.topic", "") in state:
        status, topic = await alice.request("GET", f"/rooms/{room_id}/state/m.room.topic")
        assert topic.get("topic") != "carol's topic", topic


async def test_power_level_race(make_fed_hs: Any, remote_server: Any) -> None:
    """alice (hs) lowers bob's power to 0 while bob (remote) changes the room name, then raises it
    again, several rounds: the two sides converge on one state once each has sent an event after the
    race.

    Until then they may differ, as Synapse does too: the receiver of bob's name soft-fails it (bob has
    no power in its current state) and does not build on it, while bob's server keeps it as a forward
    extremity, and once bob has power again the resolution there lets it stand."""
    local = await make_fed_hs()
    alice, bob, room_id = await shared_room(local, remote_server)
    assert alice.user_id and bob.user_id
    levels = {"state_default": 50, "events_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
              "users_default": 0}
    for r in range(3):
        await asyncio.gather(
            put_state(alice, room_id, "m.room.power_levels", "", {"users": {bob.user_id: 0}, **levels}),
            racing_put_state(bob, room_id, "m.room.name", "", {"name": f"bob's name {r}"}),
        )
        await merge(alice, bob, room_id, f"round {r} race")
        state = await converged(alice, bob, room_id)
        status, pl = await alice.request("GET", f"/rooms/{room_id}/state/m.room.power_levels")
        assert status == 200 and pl["users"] == {bob.user_id: 0}, pl
        # bob lost the race: no power, his name did not stand.
        status, name = await bob.request("GET", f"/rooms/{room_id}/state/m.room.name")
        assert status == 200 and name["name"] != f"bob's name {r}", (name, state)
        await put_state(alice, room_id, "m.room.power_levels", "", {"users": {bob.user_id: 100}, **levels})
        await merge(alice, bob, room_id, f"round {r} raised")
        await converged(alice, bob, room_id)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_bursts_from_both_sides_merge(make_fed_hs: Any, remote_server: Any, engine: str) -> None:
    """Bursts of messages and state from two users on each side at once, three rounds: every message
    reaches the other side, the states converge, and hs keeps few forward extremities."""
    local = await make_fed_hs(engine)
    alice, bob, room_id = await shared_room(local, remote_server)
    alice2 = await user(local, unique("alice2"))
    bob2 = await user(remote_server, unique("bob2"))
    for c, via in ((alice2, local), (bob2, remote_server)):
        status, body = await c.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
        assert status == 200, (body, via.log_tail(20))
    await wait_joined(alice, room_id, bob2.user_id)
    senders = {"a1": alice, "a2": alice2, "b1": bob, "b2": bob2}
    for r in range(3):
        await asyncio.gather(
            *(send_text(c, room_id, f"{name} burst {r}.{i}") for name, c in senders.items() for i in range(5)),
            put_state(alice, room_id, "org.example.fork", f"a-{r}", {"r": r}),
            put_state(bob, room_id, "org.example.fork", f"b-{r}", {"r": r}),
            put_state(alice, room_id, "m.room.topic", "", {"topic": f"a {r}"}),
            put_state(bob, room_id, "m.room.topic", "", {"topic": f"b {r}"}),
        )
    wanted = {f"{name} burst {r}.{i}" for name in senders for r in range(3) for i in range(5)}
    for client in (alice, bob):
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while (missing := wanted - await message_bodies(client, room_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert not missing, (client.user_id, sorted(missing))
    await merge(alice, bob, room_id, "after the bursts")
    await converged(alice, bob, room_id)
    assert len(await local.hs.event_store.get_forward_extremities(room_id)) <= 2


async def test_remote_ban_races_a_local_topic_change(make_fed_hs: Any, remote_server: Any) -> None:
    """The other way round: bob (remote, power 100) bans dave (hs, power 50) while dave changes the
    topic. hs built the topic on its heads; the ban arrives on an older prev event and, resolved
    with it, wins: dave is banned on both sides and his topic does not stand."""
    local = await make_fed_hs()
    dave = await user(local, unique("dave"))
    assert dave.user_id
    alice, bob, room_id = await shared_room(local, remote_server, **{dave.user_id: 50})
    status, body = await dave.request("POST", f"/join/{room_id}", {})
    assert status == 200, body
    await wait_joined(bob, room_id, dave.user_id)
    await converged(alice, bob, room_id)

    async def ban() -> None:
        status, body = await bob.request("POST", f"/rooms/{room_id}/ban", {"user_id": dave.user_id})
        assert status == 200, body

    await asyncio.gather(ban(), racing_put_state(dave, room_id, "m.room.topic", "", {"topic": "dave's topic"}))
    await merge(alice, bob, room_id, "after the remote ban")
    state = await converged(alice, bob, room_id)
    for c in (alice, bob):
        status, member = await c.request("GET", f"/rooms/{room_id}/state/m.room.member/{dave.user_id}")
        assert status == 200 and member["membership"] == "ban", member
    if ("m.room.topic", "") in state:
        status, topic = await alice.request("GET", f"/rooms/{room_id}/state/m.room.topic")
        assert topic.get("topic") != "dave's topic", topic
