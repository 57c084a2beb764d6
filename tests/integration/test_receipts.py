"""Receipts and read markers over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]



async def receipt(client: Client, room: str, event_id: str, rtype: str = "m.read", body: Json | None = None,
                  ) -> tuple[int, Any]:
    return await client.request("POST", f"/rooms/{room}/receipt/{rtype}/{event_id}", body if body is not None else {})


def receipts_in(res: Json, room: str) -> Json:
    """The merged m.receipt content of the room in a sync response ({} if none)."""
    entry = res["rooms"]["join"].get(room)
    merged: Json = {}
    if entry is None:
        return merged
    for ev in entry["ephemeral"]["events"]:
        if ev["type"] == "m.receipt":
            for event_id, by_type in ev["content"].items():
                for rtype, by_user in by_type.items():
                    merged.setdefault(event_id, {}).setdefault(rtype, {}).update(by_user)
    return merged


async def shared_room(server: TestHomeServer) -> tuple[Client, Client, str]:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    return alice, bob, room


# -- public receipts ------------------------------------------------------------------------------------------------
async def test_public_receipt_is_seen_by_members_not_outsiders(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    await carol.create_room()
    event_id = await alice.send_message(room, "hello")
    alice_since = (await alice.sync())["next_batch"]
    carol_since = (await carol.sync())["next_batch"]

    before = int(time.time() * 1000)
    status, data = await receipt(bob, room, event_id)
    assert (status, data) == (200, {})

    got = receipts_in(await alice.sync(alice_since), room)
    assert list(got) == [event_id]
    data = got[event_id]["m.read"][bob.user_id]
    assert data["ts"] >= before - 1000 and "thread_id" not in data
    # An initial sync has every latest receipt.
    assert receipts_in(await alice.sync(), room)[event_id]["m.read"][bob.user_id]["ts"] == data["ts"]
    # The outsider sees nothing of it.
    res = await carol.sync(carol_since)
    assert room not in res["rooms"]["join"]
    assert receipts_in(await carol.sync(), room) == {}


async def test_receipt_wakes_a_waiting_member(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    event_id = await alice.send_message(room, "hello")
    since = (await alice.sync())["next_batch"]

    async def later() -> None:
        await asyncio.sleep(0.3)
        await receipt(bob, room, event_id)

    task = asyncio.create_task(later())
    start = time.monotonic()
    res = await alice.sync(since, timeout=10000)
    while not receipts_in(res, room) and time.monotonic() - start < 10:
        # Woken by something else (e.g. presence): keep long-polling from there.
        res = await alice.sync(res["next_batch"], timeout=10000)
    await task
    assert time.monotonic() - start < 5
    assert bob.user_id in receipts_in(res, room)[event_id]["m.read"]
    # And the next sync from there has no repeat of it.
    assert receipts_in(await alice.sync(res["next_batch"]), room) == {}


async def test_receipts_only_move_forward(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    first = await alice.send_message(room, "one")
    second = await alice.send_message(room, "two")
    assert (await receipt(bob, room, second))[0] == 200
    since = (await alice.sync())["next_batch"]
    assert (await receipt(bob, room, first))[0] == 200
    assert receipts_in(await alice.sync(since), room) == {}
    got = receipts_in(await alice.sync(), room)
    assert bob.user_id in got[second]["m.read"]
    assert first not in got


async def test_threaded_receipts_carry_their_thread(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    root = await alice.send_message(room, "root")
    reply = await ok(alice, "PUT", f"/rooms/{room}/send/m.room.message/t1", {
        "msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    assert (await receipt(bob, room, root, body={"thread_id": "main"}))[0] == 200
    assert (await receipt(bob, room, reply["event_id"], body={"thread_id": root}))[0] == 200
    got = receipts_in(await alice.sync(), room)
    assert got[root]["m.read"][bob.user_id]["thread_id"] == "main"
    assert got[reply["event_id"]]["m.read"][bob.user_id]["thread_id"] == root


# -- private receipts ------------------------------------------------------------------------------------------------
async def test_private_receipt_is_seen_only_by_its_owner(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    event_id = await alice.send_message(room, "hello")
    alice_since = (await alice.sync())["next_batch"]
    bob_since = (await bob.sync())["next_batch"]
    assert (await receipt(bob, room, event_id, "m.read.private"))[0] == 200

    mine = receipts_in(await bob.sync(bob_since), room)
    assert bob.user_id in mine[event_id]["m.read.private"]
    assert receipts_in(await bob.sync(), room)[event_id]["m.read.private"][bob.user_id]["ts"] > 0
    # Alice: nothing, neither incrementally nor initially.
    assert receipts_in(await alice.sync(alice_since, timeout=300), room) == {}
    assert receipts_in(await alice.sync(), room) == {}


# -- errors ------------------------------------------------------------------------------------------------------------
async def test_receipt_errors(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    event_id = await alice.send_message(room, "hello")

    status, data = await receipt(carol, room, event_id)
    assert status == 403 and data["errcode"] == "M_FORBIDDEN"
    status, data = await receipt(bob, room, "$unknown:test.local")
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    status, data = await receipt(bob, room, event_id, "m.something")
    assert status == 400 and data["errcode"] == "M_INVALID_PARAM"
    status, data = await receipt(bob, room, event_id, body={"thread_id": ""})
    assert status == 400 and data["errcode"] == "M_INVALID_PARAM"
    status, data = await receipt(bob, room, event_id, body={"thread_id": 5})
    assert status == 400 and data["errcode"] == "M_INVALID_PARAM"
    status, data = await receipt(bob, room, event_id, "m.fully_read", body={"thread_id": "main"})
    assert status == 400
    status, data = await receipt(bob, room, "not-an-event")
    assert status == 400
    other = await alice.create_room()
    other_event = await alice.send_message(other, "elsewhere")
    status, data = await receipt(alice, room, other_event)
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    status, _ = await bob.request("POST", f"/rooms/{room}/receipt/m.read/{event_id}", {}, auth=False)
    assert status == 401
    assert receipts_in(await alice.sync(), room) == {}


# -- read markers ------------------------------------------------------------------------------------------------------
async def fully_read(client: Client, room: str) -> tuple[int, Any]:
    return await client.request("GET", f"/user/{client.user_id}/rooms/{room}/account_data/m.fully_read")


def room_account_data(res: Json, room: str) -> Json:
    entry = res["rooms"]["join"].get(room) or {"account_data": {"events": []}}
    return {e["type"]: e["content"] for e in entry["account_data"]["events"]}


async def test_read_markers_set_fully_read_and_receipts(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    first = await alice.send_message(room, "one")
    second = await alice.send_message(room, "two")
    bob_since = (await bob.sync())["next_batch"]
    alice_since = (await alice.sync())["next_batch"]

    await ok(bob, "POST", f"/rooms/{room}/read_markers", {"m.fully_read": second, "m.read": first,
                                                            "m.read.private": second})
    assert await fully_read(bob, room) == (200, {"event_id": second})
    res = await bob.sync(bob_since)
    assert room_account_data(res, room)["m.fully_read"] == {"event_id": second}
    mine = receipts_in(res, room)
    assert bob.user_id in mine[first]["m.read"] and bob.user_id in mine[second]["m.read.private"]
    # Alice sees the public receipt only, and none of Bob's account data.
    theirs = receipts_in(await alice.sync(alice_since), room)
    assert theirs == {first: {"m.read": {bob.user_id: theirs[first]["m.read"][bob.user_id]}}}

    # The marker never moves backwards.
    await ok(bob, "POST", f"/rooms/{room}/read_markers", {"m.fully_read": first})
    assert await fully_read(bob, room) == (200, {"event_id": second})
    # m.fully_read through the receipt endpoint is the same thing.
    third = await alice.send_message(room, "three")
    assert (await receipt(bob, room, third, "m.fully_read"))[0] == 200
    assert await fully_read(bob, room) == (200, {"event_id": third})
    # Clients may not set it directly.
    status, _ = await bob.request("PUT", f"/user/{bob.user_id}/rooms/{room}/account_data/m.fully_read",
                                  {"event_id": first})
    assert status == 405


async def test_read_marker_errors(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    carol = await user(server, "carol")
    event_id = await alice.send_message(room, "hello")
    status, data = await carol.request("POST", f"/rooms/{room}/read_markers", {"m.fully_read": event_id})
    assert status == 403 and data["errcode"] == "M_FORBIDDEN"
    status, data = await bob.request("POST", f"/rooms/{room}/read_markers", {"m.fully_read": "$nope:test.local"})
    assert status == 404 and data["errcode"] == "M_NOT_FOUND"
    status, data = await bob.request("POST", f"/rooms/{room}/read_markers", {"m.read": 12})
    assert status == 400
    # A bad event in one field changes nothing.
    status, _ = await bob.request("POST", f"/rooms/{room}/read_markers",
                                  {"m.fully_read": event_id, "m.read": "$nope:test.local"})
    assert status == 404
    assert (await fully_read(bob, room))[0] == 404
    assert receipts_in(await alice.sync(), room) == {}


async def test_ephemeral_filter_can_leave_receipts_out(server: TestHomeServer) -> None:
    alice, bob, room = await shared_room(server)
    event_id = await alice.send_message(room, "hello")
    await receipt(bob, room, event_id)
    no_receipts = json.dumps({"room": {"ephemeral": {"not_types": ["m.receipt"]}}})
    assert receipts_in(await alice.sync(filter=no_receipts), room) == {}
    other_rooms = json.dumps({"room": {"ephemeral": {"not_rooms": [room]}}})
    assert receipts_in(await alice.sync(filter=other_rooms), room) == {}
    assert bob.user_id in receipts_in(await alice.sync(), room)[event_id]["m.read"]
