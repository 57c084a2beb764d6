"""The deprecated v1 sync endpoints (GET /events, /initialSync, /rooms/{roomId}/initialSync), over real
HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]


async def events(client: Client, from_token: str | None = None, timeout: int = 0, **params: str) -> Json:
    q = {"timeout": str(timeout), **params}
    if from_token is not None:
        q["from"] = from_token
    data: Json = await ok(client, "GET", "/events", None, **q)
    return data


def messages_of(chunk: list[Json]) -> list[str]:
    return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]


async def world_readable_room(client: Client) -> str:
    return await client.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}])


# -- GET /events -----------------------------------------------------------------------------------------------
async def test_events_returns_what_was_sent_after_from(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await alice.send_message(room, "before")
    start = (await alice.sync())["next_batch"]
    sent = await alice.send_message(room, "after")
    res = await events(alice, start)
    assert res["start"] == start
    assert [e["event_id"] for e in res["chunk"] if e["type"] == "m.room.message"] == [sent]
    ev = next(e for e in res["chunk"] if e["event_id"] == sent)
    assert ev["room_id"] == room and ev["content"]["body"] == "after"
    # `end` continues from there: nothing new, nothing repeated.
    again = await events(alice, res["end"])
    assert messages_of(again["chunk"]) == []
    # It is a /sync token too.
    assert (await alice.sync(res["end"]))["next_batch"]


async def test_events_limit_returns_the_oldest_and_end_continues(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    start = (await alice.sync())["next_batch"]
    for i in range(5):
        await alice.send_message(room, f"m{i}")
    first = await events(alice, start, limit="3")
    assert messages_of(first["chunk"]) == ["m0", "m1", "m2"]
    rest = await events(alice, first["end"], limit="3")
    assert messages_of(rest["chunk"]) == ["m3", "m4"]


async def test_events_long_polls_and_wakes_on_a_new_message(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    start = (await alice.sync())["next_batch"]
    # Nothing new: the long-poll lasts its timeout.
    t0 = time.monotonic()
    empty = await events(alice, start, timeout=600)
    assert time.monotonic() - t0 >= 0.5
    assert messages_of(empty["chunk"]) == []

    async def send_later() -> None:
        await asyncio.sleep(0.3)
        await bob.send_message(room, "wake up")

    t0 = time.monotonic()
    task = asyncio.create_task(send_later())
    res = await events(alice, empty["end"], timeout=20000)
    await task
    assert time.monotonic() - t0 < 10
    assert messages_of(res["chunk"]) == ["wake up"]


async def test_events_carries_typing_receipts_and_account_data(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    event_id = await bob.send_message(room, "hi")
    start = (await alice.sync())["next_batch"]
    await ok(bob, "PUT", f"/rooms/{room}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    await ok(bob, "POST", f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/org.example.cfg", {"k": 1})
    res = await events(alice, start)
    by_type = {e["type"]: e for e in res["chunk"]}
    assert by_type["m.typing"] == {"type": "m.typing", "room_id": room, "content": {"user_ids": [bob.user_id]}}
    assert by_type["m.receipt"]["room_id"] == room
    assert bob.user_id in by_type["m.receipt"]["content"][event_id]["m.read"]
    assert by_type["org.example.cfg"]["content"] == {"k": 1}


async def test_events_peeks_a_world_readable_room_and_refuses_others(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    readable = await world_readable_room(alice)
    private = await alice.create_room()
    start = (await eve.sync())["next_batch"]
    await alice.send_message(readable, "for everyone")
    await alice.send_message(private, "for members")
    res = await events(eve, start, room_id=readable)
    assert messages_of(res["chunk"]) == ["for everyone"]
    assert all(e.get("room_id") == readable for e in res["chunk"] if "event_id" in e)
    status, err = await eve.request("GET", "/events", params={"from": start, "timeout": "0", "room_id": private})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    # Without room_id a non-member gets nothing of either room.
    assert messages_of((await events(eve, start))["chunk"]) == []


async def test_events_peek_long_poll_wakes_on_the_peeked_room(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    readable = await world_readable_room(alice)
    start = (await events(eve, room_id=readable))["end"]

    async def send_later() -> None:
        await asyncio.sleep(0.3)
        await alice.send_message(readable, "live")

    task = asyncio.create_task(send_later())
    res = await events(eve, start, timeout=20000, room_id=readable)
    await task
    assert messages_of(res["chunk"]) == ["live"]


async def test_events_rejects_a_bad_from_token(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    status, err = await alice.request("GET", "/events", params={"from": "garbage", "timeout": "0"})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"


# -- GET /initialSync -------------------------------------------------------------------------------------------
async def test_initial_sync_snapshot_and_end_as_events_from(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(name="Snap")
    for i in range(4):
        await alice.send_message(room, f"m{i}")
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/org.example.global", {"g": 1})
    await ok(alice, "PUT", f"/user/{alice.user_id}/rooms/{room}/account_data/m.tag", {"tags": {"u.work": {}}})
    invited = await bob.create_room()
    await ok(bob, "POST", f"/rooms/{invited}/invite", {"user_id": alice.user_id})

    res = await ok(alice, "GET", "/initialSync", None, limit="3")
    assert res["end"].startswith("s")
    assert isinstance(res["presence"], list)
    assert {"type": "org.example.global", "content": {"g": 1}} in res["account_data"]
    rooms = {r["room_id"]: r for r in res["rooms"]}
    joined = rooms[room]
    assert joined["membership"] == "join" and joined["visibility"] == "private"
    assert messages_of(joined["messages"]["chunk"]) == ["m1", "m2", "m3"]
    assert joined["messages"]["start"] and joined["messages"]["end"]
    assert ("m.room.name", "") in {(e["type"], e["state_key"]) for e in joined["state"]}
    assert {"type": "m.tag", "content": {"tags": {"u.work": {}}}} in joined["account_data"]
    # `start` pages back with /messages.
    page = await ok(alice, "GET", f"/rooms/{room}/messages", None,
                    **{"from": joined["messages"]["start"], "dir": "b", "limit": "1"})
    assert messages_of(page["chunk"]) == ["m0"]
    invite = rooms[invited]
    assert invite["membership"] == "invite" and invite["inviter"] == bob.user_id
    assert invite["invite"]["content"]["membership"] == "invite"

    # `end` is where /events continues.
    await alice.send_message(room, "next")
    follow = await events(alice, res["end"])
    assert messages_of(follow["chunk"]) == ["next"]


async def test_initial_sync_archived_includes_left_rooms(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await alice.send_message(room, "said before leaving")
    await ok(alice, "POST", f"/rooms/{room}/leave", {})
    plain = await ok(alice, "GET", "/initialSync", None)
    assert room not in {r["room_id"] for r in plain["rooms"]}
    archived = await ok(alice, "GET", "/initialSync", None, archived="true")
    entry = next(r for r in archived["rooms"] if r["room_id"] == room)
    assert entry["membership"] == "leave"
    assert "said before leaving" in messages_of(entry["messages"]["chunk"])
    assert entry["messages"]["chunk"][-1]["content"]["membership"] == "leave"



async def test_initial_sync_leaves_out_invites_from_ignored_users(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await bob.create_room()
    await ok(bob, "POST", f"/rooms/{room}/invite", {"user_id": alice.user_id})
    before = await ok(alice, "GET", "/initialSync", None)
    assert next(r for r in before["rooms"] if r["room_id"] == room)["inviter"] == bob.user_id
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list",
             {"ignored_users": {bob.user_id: {}}})
    after = await ok(alice, "GET", "/initialSync", None)
    assert room not in {r["room_id"] for r in after["rooms"]}

# -- GET /rooms/{roomId}/initialSync ---------------------------------------------------------------------------
async def test_room_initial_sync_for_a_member(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Mine")
    await alice.send_message(room, "hello")
    res = await ok(alice, "GET", f"/rooms/{room}/initialSync", None)
    assert res["room_id"] == room and res["membership"] == "join"
    assert messages_of(res["messages"]["chunk"]) == ["hello"]
    assert res["messages"]["end"]
    assert ("m.room.name", "") in {(e["type"], e["state_key"]) for e in res["state"]}
    assert isinstance(res["presence"], list) and isinstance(res["receipts"], list)
    assert res["account_data"] == []


async def test_room_initial_sync_previews_a_world_readable_room(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    room = await world_readable_room(alice)
    await alice.send_message(room, "public words")
    res = await ok(eve, "GET", f"/rooms/{room}/initialSync", None)
    assert res["room_id"] == room and "membership" not in res
    assert messages_of(res["messages"]["chunk"]) == ["public words"]
    assert (("m.room.member", alice.user_id) in {(e["type"], e["state_key"]) for e in res["state"]})
    # The preview's end token then peeks with /events.
    await alice.send_message(room, "more")
    follow = await events(eve, res["messages"]["end"], room_id=room)
    assert messages_of(follow["chunk"]) == ["more"]


async def test_room_initial_sync_refuses_a_private_room_to_non_members(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    eve = await user(server, "eve")
    room = await alice.create_room()
    status, err = await eve.request("GET", f"/rooms/{room}/initialSync")
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, err = await eve.request("GET", "/rooms/not-a-room/initialSync")
    assert status == 400


async def test_room_initial_sync_for_a_departed_member_stops_at_the_leave(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    await alice.send_message(room, "while bob was here")
    await ok(bob, "POST", f"/rooms/{room}/leave", {})
    await alice.send_message(room, "after bob left")
    res = await ok(bob, "GET", f"/rooms/{room}/initialSync", None)
    assert res["membership"] == "leave"
    said = messages_of(res["messages"]["chunk"])
    assert "while bob was here" in said and "after bob left" not in said
    members = {e["state_key"]: e["content"]["membership"] for e in res["state"] if e["type"] == "m.room.member"}
    assert members[bob.user_id] == "leave"
