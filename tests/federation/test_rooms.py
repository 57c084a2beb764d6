"""Rooms across servers, against a real Synapse and against a second hs: joins both ways, messages
both ways with identical event IDs, state converging."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from tests.federation.client import TlsClient, unique, user


async def wait_for_event(client: TlsClient, room_id: str, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Poll /messages (newest first) until an event matches; fail with what was seen."""
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while time.monotonic() < deadline:
        status, body = await client.request("GET", f"/rooms/{room_id}/messages",
                                            params={"dir": "b", "limit": "50"})
        if status == 200:
            seen = body.get("chunk", [])
            for ev in seen:
                if predicate(ev):
                    return dict(ev)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no matching event in {room_id} within {timeout}s; saw "
                         f"{[(e.get('type'), e.get('sender'), e.get('content')) for e in seen][:10]}")


async def wait_joined(client: TlsClient, room_id: str, user_id: str, timeout: float = 20.0) -> None:
    await wait_for_event(client, room_id, lambda e: e.get("type") == "m.room.member"
                         and e.get("state_key") == user_id and e["content"].get("membership") == "join", timeout)


def text(body: str) -> Any:
    return lambda e: e.get("type") == "m.room.message" and e.get("content", {}).get("body") == body


async def test_remote_user_joins_hs_room_and_messages_flow_both_ways(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="public_chat", name="fed test")
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, (body, remote_server.log_tail(40))
    await wait_joined(alice, room_id, bob.user_id)
    from_alice = await alice.send_message(room_id, "hello from hs")
    seen_by_bob = await wait_for_event(bob, room_id, text("hello from hs"))
    assert seen_by_bob["event_id"] == from_alice
    status, body = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                                     {"msgtype": "m.text", "body": "hello from remote"})
    assert status == 200, body
    seen_by_alice = await wait_for_event(alice, room_id, text("hello from remote"))
    assert seen_by_alice["event_id"] == body["event_id"]


async def test_hs_user_joins_remote_room_by_alias(make_fed_hs: Any, remote_server: Any) -> None:
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    alias_name = unique("fedroom")
    room_id = await bob.create_room(preset="public_chat", name="remote room", room_alias_name=alias_name)
    alias = f"#{alias_name}:{remote_server.server_name}"
    status, body = await alice.request("POST", f"/join/{quote(alias)}", {})
    assert status == 200, (body, local.log_tail(40))
    assert body["room_id"] == room_id
    await wait_joined(bob, room_id, alice.user_id)
    # The room's state arrived with the join: its name is readable here.
    status, name = await alice.request("GET", f"/rooms/{room_id}/state/m.room.name")
    assert status == 200 and name["name"] == "remote room"
    status, sent = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                                     {"msgtype": "m.text", "body": "from the room's home"})
    assert status == 200
    seen = await wait_for_event(alice, room_id, text("from the room's home"))
    assert seen["event_id"] == sent["event_id"]
    from_alice = await alice.send_message(room_id, "from the joiner")
    seen = await wait_for_event(bob, room_id, text("from the joiner"))
    assert seen["event_id"] == from_alice


async def test_backfill_of_40_messages_back_to_the_create_event(make_fed_hs: Any, remote_server: Any) -> None:
    """History from before the join is fetched from the room's server as the joiner pages back."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await bob.create_room(preset="public_chat", name="history")
    sent = []
    for i in range(40):
        status, body = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/h{i}",
                                         {"msgtype": "m.text", "body": f"old {i}"})
        assert status == 200
        sent.append(body["event_id"])
    status, body = await alice.request("POST", f"/join/{room_id}", {},
                                       params={"server_name": remote_server.server_name})
    assert status == 200, (body, local.log_tail(30))
    seen: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(30):
        params = {"dir": "b", "limit": "10"}
        if token is not None:
            params["from"] = token
        status, page = await alice.request("GET", f"/rooms/{room_id}/messages", params=params)
        assert status == 200, page
        seen.extend(page["chunk"])
        token = page.get("end")
        if token is None or any(e["type"] == "m.room.create" for e in page["chunk"]):
            break
    messages = [e["event_id"] for e in seen if e["type"] == "m.room.message"]
    assert messages == list(reversed(sent)), (len(messages), local.log_tail(30))
    assert any(e["type"] == "m.room.create" for e in seen), [e["type"] for e in seen]


async def test_server_acl_keeps_a_denied_server_out(make_fed_hs: Any, remote_server: Any) -> None:
    """With m.room.server_acl denying the remote server, its users cannot join any more."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="public_chat")
    remote_host = remote_server.server_name.rsplit(":", 1)[0]
    status, body = await alice.request("PUT", f"/rooms/{room_id}/state/m.room.server_acl",
                                       {"allow": ["*"], "deny": [remote_host], "allow_ip_literals": True})
    assert status == 200, body
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 403, body
    status, members = await alice.request("GET", f"/rooms/{room_id}/joined_members")
    assert bob.user_id not in members["joined"]


async def test_server_acl_refuses_events_from_a_denied_server(make_fed_hs: Any, remote_server: Any) -> None:
    """A server denied after joining: its events no longer enter the room here."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="public_chat")
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    await wait_joined(alice, room_id, bob.user_id)
    remote_host = remote_server.server_name.rsplit(":", 1)[0]
    status, body = await alice.request("PUT", f"/rooms/{room_id}/state/m.room.server_acl",
                                       {"allow": ["*"], "deny": [remote_host], "allow_ip_literals": True})
    assert status == 200, body
    await wait_for_event(bob, room_id, lambda e: e.get("type") == "m.room.server_acl")
    status, sent = await bob.request("PUT", f"/rooms/{room_id}/send/m.room.message/acl1",
                                     {"msgtype": "m.text", "body": "after the acl"})
    assert status == 200, sent
    marker = await alice.send_message(room_id, "marker after")
    await asyncio.sleep(2.0)  # the remote server has sent its message by now (it arrives in ~10 ms)
    status, page = await alice.request("GET", f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "20"})
    bodies = [e.get("content", {}).get("body") for e in page["chunk"]]
    assert "marker after" in bodies and "after the acl" not in bodies, bodies
    assert marker


async def test_create_room_invites_a_remote_user(make_fed_hs: Any, remote_server: Any) -> None:
    """createRoom's `invite` naming another server's user: the invite is co-signed by their server and
    reaches them (their /sync lists the room under invite), and they can join."""
    local = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote_server, unique("bob"))
    room_id = await alice.create_room(preset="private_chat", name="dm", invite=[bob.user_id], is_direct=True)
    deadline = time.monotonic() + 20
    invited: dict[str, Any] = {}
    while time.monotonic() < deadline and room_id not in invited:
        body = await bob.sync(timeout=1000)
        invited = body.get("rooms", {}).get("invite", {})
    assert room_id in invited, remote_server.log_tail(30)
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    await wait_joined(alice, room_id, bob.user_id)


async def test_a_remote_server_down_stalls_nothing_here_and_catches_up(make_fed_hs: Any) -> None:
    """With the other server of a room stopped, sends here (in that room and others) keep their
    latency, and what it missed reaches it once it is back (its first request wakes our queue for it)."""
    local = await make_fed_hs()
    remote = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote, unique("bob"))
    shared = await alice.create_room(preset="public_chat")
    own = await alice.create_room(preset="public_chat")
    status, body = await bob.request("POST", f"/join/{shared}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    await wait_joined(alice, shared, bob.user_id)
    await remote.stop()
    latencies: list[float] = []
    sent: list[str] = []
    for i in range(20):
        for room in (shared, own):
            began = time.monotonic()
            event_id = await alice.send_message(room, f"while down {i}")
            latencies.append(time.monotonic() - began)
            if room == shared:
                sent.append(event_id)
    latencies.sort()
    # 40 sends with the room's other server gone: none waits for it (on this machine ~5-20 ms each).
    assert latencies[-1] < 1.0, f"slowest send {latencies[-1]:.3f} s, median {latencies[len(latencies) // 2]:.3f} s"
    from hs.server import HomeServer

    remote.hs = HomeServer(remote.config, "main", signing_key=remote.hs.signing_key)
    await remote.start()
    status, body = await bob.request("PUT", f"/rooms/{shared}/send/m.room.message/back",
                                     {"msgtype": "m.text", "body": "back"})
    assert status == 200, body
    await wait_for_event(alice, shared, text("back"))
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(sent) <= seen:
        status, page = await bob.request("GET", f"/rooms/{shared}/messages", params={"dir": "b", "limit": "100"})
        seen = {e["event_id"] for e in page.get("chunk", [])}
        await asyncio.sleep(0.3)
    assert set(sent) <= seen, f"{len(set(sent) - seen)} of the 20 sends did not reach the restarted server"
