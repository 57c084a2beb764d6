"""Typing notifications over real HTTP, on SQLite and PostgreSQL: PUT /typing and m.typing in /sync."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from hs.server import HomeServer
from hs.streams.tokens import StreamToken
from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]




def typing_path(room_id: str, user_id: str | None) -> str:
    assert user_id is not None
    return f"/rooms/{room_id}/typing/{quote(user_id)}"


async def set_typing(client: Client, room_id: str, typing: bool, timeout: int | None = 30000) -> None:
    body: Json = {"typing": typing}
    if timeout is not None:
        body["timeout"] = timeout
    await ok(client, "PUT", typing_path(room_id, client.user_id), body)


def typing_in(res: Json, room_id: str) -> list[str] | None:
    """The user IDs of the room's m.typing event in a sync response, or None if it has none."""
    entry = res["rooms"]["join"].get(room_id)
    if entry is None:
        return None
    found = [e for e in entry["ephemeral"]["events"] if e["type"] == "m.typing"]
    assert len(found) <= 1, found
    return sorted(found[0]["content"]["user_ids"]) if found else None


def same_positions(a: str, b: str, *streams: str) -> bool:
    ta, tb = StreamToken.decode(a), StreamToken.decode(b)
    return all(ta.get(s) == tb.get(s) for s in streams)


async def shared_room(server: TestHomeServer) -> tuple[Client, Client, str]:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    return alice, bob, room


async def restart(srv: TestHomeServer) -> None:
    """Stop the homeserver and start a fresh process-equivalent on the same database and port."""
    await srv.stop()
    srv.hs = HomeServer(srv.config, "main", signing_key=srv.hs.signing_key)
    srv._runner = None
    await srv.start()


# -- visibility --------------------------------------------------------------------------------------------
async def test_typing_seen_by_room_members_only(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    await carol.create_room()
    bob_since = (await bob.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]
    await set_typing(alice, room, True)
    bob_res = await bob.sync(bob_since)
    assert typing_in(bob_res, room) == [alice.user_id]
    assert bob_res["rooms"]["join"][room]["timeline"]["events"] == []
    # The typing position is part of the token.
    assert StreamToken.decode(bob_res["next_batch"]).get("typing") > StreamToken.decode(bob_since).get("typing")
    assert typing_in(await alice.sync(), room) == [alice.user_id]
    assert typing_in(await bob.sync(), room) == [alice.user_id]
    # Carol is not in the room: neither an incremental nor an initial sync mentions it.
    carol_res = await carol.sync(carol_since)
    assert room not in carol_res["rooms"]["join"]
    assert room not in (await carol.sync())["rooms"]["join"]
    # Nothing new for bob afterwards.
    again = await bob.sync(bob_res["next_batch"])
    assert again["rooms"]["join"] == {}
    assert same_positions(again["next_batch"], bob_res["next_batch"], "events", "typing")


async def test_two_typists_and_stopping(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    since = (await bob.sync())["next_batch"]
    await set_typing(alice, room, True)
    await set_typing(bob, room, True)
    res = await bob.sync(since)
    assert typing_in(res, room) == sorted([alice.user_id, bob.user_id])
    await set_typing(alice, room, False)
    res2 = await bob.sync(res["next_batch"])
    assert typing_in(res2, room) == [bob.user_id]
    await set_typing(bob, room, False, timeout=None)
    res3 = await bob.sync(res2["next_batch"])
    assert typing_in(res3, room) == []
    # An initial sync does not mention a room where nobody is typing.
    assert typing_in(await bob.sync(), room) is None


async def test_refreshing_typing_is_not_a_change(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    await set_typing(alice, room, True)
    since = (await bob.sync())["next_batch"]
    await set_typing(alice, room, True)
    res = await bob.sync(since)
    assert res["rooms"]["join"] == {}
    # Stopping when not typing is not a change either.
    await set_typing(bob, room, False)
    assert (await bob.sync(since))["rooms"]["join"] == {}


async def test_typing_filtered_out_by_ephemeral_filter(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    await set_typing(alice, room, True)
    res = await bob.sync(filter='{"room": {"ephemeral": {"not_types": ["m.typing"]}}}')
    assert typing_in(res, room) is None


# -- expiry ----------------------------------------------------------------------------------------------
async def test_typing_times_out(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    since = (await bob.sync())["next_batch"]
    await set_typing(alice, room, True, timeout=400)
    started = time.monotonic()
    res = await bob.sync(since)
    assert typing_in(res, room) == [alice.user_id]
    # The expiry is a change of its own: it wakes bob's long-poll.
    expired = await asyncio.wait_for(bob.sync(res["next_batch"], timeout=10000), 5)
    elapsed = time.monotonic() - started
    assert typing_in(expired, room) == []
    assert 0.3 <= elapsed < 2.0, elapsed
    assert typing_in(await bob.sync(), room) is None


async def test_refresh_extends_the_timeout(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    await set_typing(alice, room, True, timeout=400)
    await asyncio.sleep(0.25)
    await set_typing(alice, room, True, timeout=2000)
    await asyncio.sleep(0.35)  # past the first timeout
    assert typing_in(await bob.sync(), room) == [alice.user_id]


# -- long-polling ------------------------------------------------------------------------------------------
async def test_typing_wakes_long_poll_of_room_member_promptly(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    since = (await bob.sync())["next_batch"]
    task = asyncio.create_task(bob.sync(since, timeout=20000))
    await asyncio.sleep(0.3)
    assert not task.done(), "the long-poll returned before anything happened"
    await set_typing(alice, room, True)
    sent_at = time.monotonic()
    res = await asyncio.wait_for(task, 5)
    latency = time.monotonic() - sent_at
    assert typing_in(res, room) == [alice.user_id]
    assert latency < 1.0, f"long-poll took {latency:.3f}s to notice typing"


async def test_typing_in_other_room_does_not_wake_long_poll(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    await carol.create_room()
    since = (await carol.sync())["next_batch"]
    task = asyncio.create_task(carol.sync(since, timeout=800))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await set_typing(alice, room, True)
    await set_typing(bob, room, True)
    res = await asyncio.wait_for(task, 5)
    assert time.monotonic() - start >= 0.6, "carol's long-poll was woken by typing in a room she is not in"
    assert res["rooms"]["join"] == {}


# -- errors ----------------------------------------------------------------------------------------------
async def test_typing_errors(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    # For somebody else.
    status, data = await alice.request("PUT", typing_path(room, bob.user_id), {"typing": True, "timeout": 1000})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
    # Not joined (and invited is not joined either).
    status, data = await carol.request("PUT", typing_path(room, carol.user_id), {"typing": True, "timeout": 1000})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
    private = await alice.create_room()
    await ok(alice, "POST", f"/rooms/{private}/invite", {"user_id": carol.user_id})
    status, data = await carol.request("PUT", typing_path(private, carol.user_id), {"typing": True})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
    status, data = await carol.request("PUT", typing_path("!nope", carol.user_id), {"typing": True})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
    # Bad bodies.
    path = typing_path(room, alice.user_id)
    for body, errcode in [({}, "M_MISSING_PARAM"), ({"typing": "yes"}, "M_BAD_JSON"),
                          ({"typing": True, "timeout": "soon"}, "M_BAD_JSON"),
                          ({"typing": True, "timeout": 1.5}, "M_BAD_JSON"),
                          ({"typing": True, "timeout": -1}, "M_INVALID_PARAM"), ([True], "M_BAD_JSON")]:
        status, data = await alice.request("PUT", path, body)
        assert (status, data["errcode"]) == (400, errcode), (body, data)
    status, data = await alice.request("PUT", path, raw=b"{")
    assert (status, data["errcode"]) == (400, "M_NOT_JSON"), data
    status, data = await alice.request("PUT", path, {"typing": True}, auth=False)
    assert status == 401, data
    # None of that made anybody typing.
    assert typing_in(await bob.sync(), room) is None


# -- restarts --------------------------------------------------------------------------------------------
async def test_token_from_before_restart_with_higher_typing_position(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    for _ in range(3):
        await set_typing(alice, room, True)
        await set_typing(alice, room, False)
    old = (await bob.sync())["next_batch"]
    assert StreamToken.decode(old).get("typing") >= 6
    await restart(server)
    # Typing positions start again at 0: the old token still works, and long-polls when nothing happened.
    start = time.monotonic()
    res = await bob.sync(old, timeout=400)
    assert time.monotonic() - start >= 0.35
    assert res["rooms"]["join"] == {}
    token = StreamToken.decode(res["next_batch"])
    assert token.get("typing") == 0
    assert token.get("events") == StreamToken.decode(old).get("events")
    # New typing after the restart is seen both from the old token and from the new one.
    await set_typing(alice, room, True)
    assert typing_in(await bob.sync(old), room) == [alice.user_id]
    assert typing_in(await bob.sync(res["next_batch"]), room) == [alice.user_id]


# -- leaving -----------------------------------------------------------------------------------------------
async def test_leaving_the_room_stops_typing(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    await set_typing(bob, room, True, timeout=60000)
    res = await alice.sync()
    assert typing_in(res, room) == [bob.user_id]
    task = asyncio.create_task(alice.sync(res["next_batch"], timeout=10000))
    await asyncio.sleep(0.1)
    await ok(bob, "POST", f"/rooms/{room}/leave", {})
    # Alice's long-poll returns for the leave event; the typing change follows it at once.
    first = await asyncio.wait_for(task, 5)
    since = first["next_batch"]
    seen = typing_in(first, room)
    deadline = time.monotonic() + 2
    while seen is None and time.monotonic() < deadline:
        nxt = await alice.sync(since, timeout=1000)
        seen, since = typing_in(nxt, room), nxt["next_batch"]
    assert seen == []
    status, data = await bob.request("PUT", typing_path(room, bob.user_id), {"typing": True})
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), data
