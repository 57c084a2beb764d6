"""Account data (global and per room) and room tags over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import pytest

from hs.server import HomeServer
from hs.streams.tokens import StreamToken
from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]



def uid(client: Client) -> str:
    assert client.user_id is not None
    return quote(client.user_id)


def global_path(client: Client, data_type: str, owner: Client | None = None) -> str:
    return f"/user/{uid(owner or client)}/account_data/{data_type}"


def room_path(client: Client, room_id: str, data_type: str, owner: Client | None = None) -> str:
    return f"/user/{uid(owner or client)}/rooms/{room_id}/account_data/{data_type}"


def tags_path(client: Client, room_id: str, tag: str | None = None) -> str:
    base = f"/user/{uid(client)}/rooms/{room_id}/tags"
    return base if tag is None else f"{base}/{quote(tag)}"



def same_positions(a: str, b: str, *streams: str) -> bool:
    ta, tb = StreamToken.decode(a), StreamToken.decode(b)
    return all(ta.get(s) == tb.get(s) for s in streams)


def global_events(res: Json) -> dict[str, Json]:
    # m.push_rules is server-managed (push rules, sent on every initial sync): not this module's data.
    return {e["type"]: e["content"] for e in res["account_data"]["events"] if e["type"] != "m.push_rules"}


def room_events(res: Json, room_id: str) -> dict[str, Json]:
    entry = res["rooms"]["join"].get(room_id)
    if entry is None:
        return {}
    return {e["type"]: e["content"] for e in entry["account_data"]["events"]}


# -- global account data ---------------------------------------------------------------------------------
async def test_global_account_data_put_get_and_overwrite(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    assert await ok(alice, "PUT", global_path(alice, "org.example.cfg"), {"a": 1}) == {}
    assert await ok(alice, "GET", global_path(alice, "org.example.cfg")) == {"a": 1}
    await ok(alice, "PUT", global_path(alice, "org.example.cfg"), {"b": [1, 2]})
    assert await ok(alice, "GET", global_path(alice, "org.example.cfg")) == {"b": [1, 2]}


async def test_global_account_data_unknown_type_is_404(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    status, data = await alice.request("GET", global_path(alice, "org.example.nothing"))
    assert (status, data["errcode"]) == (404, "M_NOT_FOUND")


async def test_other_users_account_data_is_forbidden(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room()
    await ok(alice, "PUT", global_path(alice, "org.example.secret"), {"s": 1})
    await ok(alice, "PUT", room_path(alice, room, "org.example.secret"), {"s": 2})
    for method, path, body in [
        ("GET", global_path(bob, "org.example.secret", owner=alice), None),
        ("PUT", global_path(bob, "org.example.secret", owner=alice), {"s": 3}),
        ("GET", room_path(bob, room, "org.example.secret", owner=alice), None),
        ("PUT", room_path(bob, room, "org.example.secret", owner=alice), {"s": 3}),
        ("GET", f"/user/{uid(alice)}/rooms/{room}/tags", None),
        ("PUT", f"/user/{uid(alice)}/rooms/{room}/tags/u.x", {}),
        ("DELETE", f"/user/{uid(alice)}/rooms/{room}/tags/u.x", None),
    ]:
        status, data = await bob.request(method, path, body)
        assert (status, data["errcode"]) == (403, "M_FORBIDDEN"), (method, path, data)
    # Bob's attempts changed nothing.
    assert await ok(alice, "GET", global_path(alice, "org.example.secret")) == {"s": 1}
    assert await ok(alice, "GET", room_path(alice, room, "org.example.secret")) == {"s": 2}


async def test_account_data_needs_auth(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    status, data = await alice.request("GET", global_path(alice, "org.example.cfg"), auth=False)
    assert (status, data["errcode"]) == (401, "M_MISSING_TOKEN")


@pytest.mark.parametrize("data_type", ["m.fully_read", "m.push_rules"])
async def test_server_managed_types_are_refused(server: TestHomeServer, data_type: str) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    for path in (global_path(alice, data_type), room_path(alice, room, data_type)):
        status, data = await alice.request("PUT", path, {"event_id": "$x"})
        assert (status, data["errcode"]) == (405, "M_BAD_JSON"), (path, data)
        status, data = await alice.request("GET", path)
        assert status == 404, data


async def test_invalid_bodies_and_room_ids(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    for path in (global_path(alice, "org.example.cfg"), room_path(alice, room, "org.example.cfg")):
        status, data = await alice.request("PUT", path, [1, 2])
        assert (status, data["errcode"]) == (400, "M_BAD_JSON"), data
        status, data = await alice.request("PUT", path, raw=b"{not json")
        assert (status, data["errcode"]) == (400, "M_NOT_JSON"), data
        status, data = await alice.request("PUT", path, raw=b"")
        assert (status, data["errcode"]) == (400, "M_NOT_JSON"), data
    status, data = await alice.request("PUT", room_path(alice, "not-a-room", "org.example.cfg"), {"a": 1})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), data
    status, data = await alice.request("GET", room_path(alice, "not-a-room", "org.example.cfg"))
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), data
    status, data = await alice.request("GET", global_path(alice, "org.example.cfg"))
    assert status == 404, data


# -- room account data -----------------------------------------------------------------------------------
async def test_room_account_data_is_separate_from_global(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    other = await alice.create_room()
    await ok(alice, "PUT", room_path(alice, room, "org.example.cfg"), {"room": True})
    assert await ok(alice, "GET", room_path(alice, room, "org.example.cfg")) == {"room": True}
    for path in (global_path(alice, "org.example.cfg"), room_path(alice, other, "org.example.cfg")):
        status, data = await alice.request("GET", path)
        assert (status, data["errcode"]) == (404, "M_NOT_FOUND"), (path, data)


# -- sync ------------------------------------------------------------------------------------------------
async def test_initial_sync_has_all_account_data(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await ok(alice, "PUT", global_path(alice, "org.example.a"), {"v": 1})
    await ok(alice, "PUT", global_path(alice, "org.example.b"), {"v": 2})
    await ok(alice, "PUT", room_path(alice, room, "org.example.r"), {"v": 3})
    res = await alice.sync()
    assert global_events(res) == {"org.example.a": {"v": 1}, "org.example.b": {"v": 2}}
    assert room_events(res, room) == {"org.example.r": {"v": 3}}


async def test_incremental_sync_has_only_changed_account_data(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await ok(alice, "PUT", global_path(alice, "org.example.a"), {"v": 1})
    first = await alice.sync()
    await ok(alice, "PUT", global_path(alice, "org.example.b"), {"v": 2})
    await ok(alice, "PUT", room_path(alice, room, "org.example.r"), {"v": 3})
    res = await alice.sync(first["next_batch"])
    assert global_events(res) == {"org.example.b": {"v": 2}}
    entry = res["rooms"]["join"][room]
    assert room_events(res, room) == {"org.example.r": {"v": 3}}
    assert entry["timeline"]["events"] == []
    # Nothing new: empty again, with the same token.
    again = await alice.sync(res["next_batch"])
    assert global_events(again) == {}
    assert again["rooms"]["join"] == {}
    assert same_positions(again["next_batch"], res["next_batch"], "events", "account_data")


async def test_account_data_not_synced_to_other_users(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    bob_since = (await bob.sync())["next_batch"]
    await ok(alice, "PUT", global_path(alice, "org.example.a"), {"v": 1})
    await ok(alice, "PUT", room_path(alice, room, "org.example.r"), {"v": 3})
    await ok(alice, "PUT", tags_path(alice, room, "u.work"), {"order": 0.5})
    res = await bob.sync(bob_since)
    assert global_events(res) == {}
    assert room not in res["rooms"]["join"]
    initial = await bob.sync()
    assert global_events(initial) == {}
    assert room_events(initial, room) == {}


async def test_account_data_wakes_own_long_poll_promptly(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    since = (await alice.sync())["next_batch"]
    task = asyncio.create_task(alice.sync(since, timeout=20000))
    await asyncio.sleep(0.3)
    assert not task.done(), "the long-poll returned before anything happened"
    await ok(alice, "PUT", global_path(alice, "org.example.wake"), {"v": 1})
    sent_at = time.monotonic()
    res = await asyncio.wait_for(task, 5)
    assert time.monotonic() - sent_at < 1.0
    assert global_events(res) == {"org.example.wake": {"v": 1}}
    assert res["next_batch"] != since


async def test_other_users_account_data_does_not_wake_long_poll(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    since = (await alice.sync())["next_batch"]
    task = asyncio.create_task(alice.sync(since, timeout=800))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await ok(bob, "PUT", global_path(bob, "org.example.a"), {"v": 1})
    await ok(bob, "PUT", room_path(bob, room, "org.example.a"), {"v": 1})
    res = await task
    assert time.monotonic() - start >= 0.5, "alice's long-poll was woken by bob's account data"
    assert global_events(res) == {}
    assert res["rooms"]["join"] == {}


async def test_account_data_filter(server: TestHomeServer) -> None:
    import json

    alice = await user(server, "alice")
    room = await alice.create_room()
    await ok(alice, "PUT", global_path(alice, "org.example.keep"), {"v": 1})
    await ok(alice, "PUT", global_path(alice, "org.example.drop"), {"v": 2})
    await ok(alice, "PUT", room_path(alice, room, "org.example.drop"), {"v": 3})
    flt = {"account_data": {"not_types": ["org.example.drop"]},
           "room": {"account_data": {"types": ["org.example.keep"]}}}
    res = await alice.sync(filter=json.dumps(flt))
    assert global_events(res) == {"org.example.keep": {"v": 1}}
    assert room_events(res, room) == {}


# -- tags ------------------------------------------------------------------------------------------------
async def test_tags_crud(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    assert await ok(alice, "GET", tags_path(alice, room)) == {"tags": {}}
    assert await ok(alice, "PUT", tags_path(alice, room, "m.favourite"), {"order": 0.25}) == {}
    await ok(alice, "PUT", tags_path(alice, room, "u.Work"), {})
    await ok(alice, "PUT", tags_path(alice, room, "u.Customers"), {"order": 1})
    assert await ok(alice, "GET", tags_path(alice, room)) == {
        "tags": {"m.favourite": {"order": 0.25}, "u.Work": {}, "u.Customers": {"order": 1}}}
    # Replacing a tag's content.
    await ok(alice, "PUT", tags_path(alice, room, "m.favourite"), {"order": 0.75})
    assert await ok(alice, "DELETE", tags_path(alice, room, "u.Work")) == {}
    assert await ok(alice, "GET", tags_path(alice, room)) == {
        "tags": {"m.favourite": {"order": 0.75}, "u.Customers": {"order": 1}}}
    # Deleting a tag that is not there succeeds and changes nothing.
    await ok(alice, "DELETE", tags_path(alice, room, "u.Nope"))
    # The tags are the room's m.tag account data.
    assert await ok(alice, "GET", room_path(alice, room, "m.tag")) == {
        "tags": {"m.favourite": {"order": 0.75}, "u.Customers": {"order": 1}}}


async def test_tags_invalid_input(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    for body in ({"order": "high"}, {"order": True}, {"order": None}, {"order": [0.1]}):
        status, data = await alice.request("PUT", tags_path(alice, room, "u.x"), body)
        assert (status, data["errcode"]) == (400, "M_BAD_JSON"), (body, data)
    status, data = await alice.request("PUT", tags_path(alice, room, "u.x"), ["order"])
    assert (status, data["errcode"]) == (400, "M_BAD_JSON"), data
    status, data = await alice.request("PUT", tags_path(alice, room, "u.x"), raw=b"nope")
    assert (status, data["errcode"]) == (400, "M_NOT_JSON"), data
    status, data = await alice.request("PUT", tags_path(alice, room, "u." + "x" * 300), {})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), data
    status, data = await alice.request("GET", tags_path(alice, "bad-room"))
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), data
    assert await ok(alice, "GET", tags_path(alice, room)) == {"tags": {}}


async def test_concurrent_tag_puts_are_all_kept(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    names = [f"u.t{i}" for i in range(10)]
    await asyncio.gather(*(ok(alice, "PUT", tags_path(alice, room, n), {"order": 0.1}) for n in names))
    tags = (await ok(alice, "GET", tags_path(alice, room)))["tags"]
    assert sorted(tags) == sorted(names)


async def test_tags_in_sync(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await ok(alice, "PUT", tags_path(alice, room, "m.favourite"), {"order": 0.5})
    first = await alice.sync()
    assert room_events(first, room) == {"m.tag": {"tags": {"m.favourite": {"order": 0.5}}}}
    await ok(alice, "PUT", tags_path(alice, room, "u.Work"), {})
    second = await alice.sync(first["next_batch"])
    assert room_events(second, room) == {"m.tag": {"tags": {"m.favourite": {"order": 0.5}, "u.Work": {}}}}
    await ok(alice, "DELETE", tags_path(alice, room, "m.favourite"))
    third = await alice.sync(second["next_batch"])
    assert room_events(third, room) == {"m.tag": {"tags": {"u.Work": {}}}}
    # Deleting an absent tag is not a change.
    await ok(alice, "DELETE", tags_path(alice, room, "m.favourite"))
    fourth = await alice.sync(third["next_batch"])
    assert fourth["rooms"]["join"] == {}
    assert same_positions(fourth["next_batch"], third["next_batch"], "events", "account_data")


async def restart(srv: TestHomeServer) -> None:
    """Stop the homeserver and start a fresh process-equivalent on the same database and port."""
    await srv.stop()
    srv.hs = HomeServer(srv.config, "main", signing_key=srv.hs.signing_key)
    srv._runner = None
    await srv.start()


async def test_account_data_survives_restart(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await ok(alice, "PUT", global_path(alice, "org.example.a"), {"v": 1})
    token = (await alice.sync())["next_batch"]
    # The position allocator continues above the stored rows after a restart.
    await restart(server)
    await ok(alice, "PUT", global_path(alice, "org.example.b"), {"v": 2})
    res = await alice.sync(token)
    assert global_events(res) == {"org.example.b": {"v": 2}}
    assert await ok(alice, "GET", global_path(alice, "org.example.a")) == {"v": 1}
