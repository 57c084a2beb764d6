"""/sync and history edge cases: a room joined since the last sync (limited timeline, state at the
timeline's start, its members' presence), a user's own join under `joined` history visibility,
lazy-loaded members in incremental syncs, and filters given inline as JSON (incl. `event_format:
federation` and an empty timeline). Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]
LAZY = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}}


async def join(client: Client, room: str) -> None:
    await ok(client, "POST", f"/rooms/{room}/join", {})


async def sync(client: Client, since: str | None = None, filter: Any = None, **params: str) -> Json:
    if filter is not None:
        params["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
    return await client.sync(since, **params)


def room_entry(res: Json, room: str, section: str = "join") -> Json:
    return dict(res["rooms"][section][room])


def bodies(events: list[Json]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def members(events: list[Json]) -> set[str]:
    return {e["state_key"] for e in events if e["type"] == "m.room.member"}


async def send_many(client: Client, room: str, prefix: str, n: int) -> list[str]:
    return [await client.send_message(room, f"{prefix}{i}") for i in range(n)]


# -- a room joined since the last sync -------------------------------------------------------------------
async def test_newly_joined_room_is_limited_with_state_at_timeline_start(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat", name="Edges")
    await send_many(alice, room, "test1-", 4)
    since = (await sync(bob))["next_batch"]
    await send_many(alice, room, "test2-", 4)
    await join(bob, room)

    # Messages only (sytest's "Newly joined room has correct timeline"): all 8 fit, yet history
    # exists before them, so the timeline is limited.
    flt = {"room": {"timeline": {"types": ["m.room.message"], "limit": 10}, "state": {"types": []}}}
    entry = room_entry(await sync(bob, since, flt), room)
    assert len(bodies(entry["timeline"]["events"])) == 8
    assert entry["timeline"]["limited"] is True
    assert entry["state"]["events"] == []

    # A short timeline: the state is the room's at the timeline's start (name, alice's membership),
    # and bob's join, which the timeline shows, is not repeated there.
    entry = room_entry(await sync(bob, since, {"room": {"timeline": {"limit": 3}}}), room)
    timeline = entry["timeline"]["events"]
    assert entry["timeline"]["limited"] is True
    assert [e["type"] for e in timeline][-1] == "m.room.member" and timeline[-1]["state_key"] == bob.user_id
    state = {(e["type"], e["state_key"]) for e in entry["state"]["events"]}
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", alice.user_id)} <= state
    assert ("m.room.member", bob.user_id) not in state

    # A timeline holding the room's whole history is not limited.
    entry = room_entry(await sync(bob, since, {"room": {"timeline": {"limit": 50}}}), room)
    assert entry["timeline"]["limited"] is False
    assert entry["timeline"]["events"][0]["type"] == "m.room.create"


async def test_newly_joined_room_brings_its_members_presence(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await sync(alice)  # alice comes online
    first = await sync(bob)
    await join(bob, room)
    res = await sync(bob, first["next_batch"])
    senders = {e["sender"] for e in res["presence"]["events"]}
    assert alice.user_id in senders


# -- joined history visibility ---------------------------------------------------------------------------
async def test_own_join_is_seen_under_joined_history_visibility(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}])
    await send_many(alice, room, "before", 15)
    since = (await sync(bob))["next_batch"]
    await join(bob, room)
    await send_many(alice, room, "after", 2)

    def own_join(entry: Json) -> bool:
        return any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
                   and e["content"]["membership"] == "join"
                   for e in entry["timeline"]["events"] + entry["state"]["events"])

    for res in (await sync(bob, filter={"room": {"timeline": {"limit": 5}}}),
                await sync(bob, since, filter={"room": {"timeline": {"limit": 5}}}),
                await sync(bob, since, filter={"room": {"timeline": {"limit": 1}}}),
                await sync(bob, since, filter={"room": {"timeline": {"types": ["m.room.message"]}}}),
                await sync(bob, since, filter=LAZY)):
        entry = room_entry(res, room)
        assert own_join(entry), entry
        # Nothing from before the join.
        assert not [b for b in bodies(entry["timeline"]["events"]) if b.startswith("before")]


# -- lazy-loaded members ---------------------------------------------------------------------------------
async def test_lazy_members_in_incremental_sync_are_only_new_timeline_senders(server: TestHomeServer) -> None:
    alice, bob, charlie, dave = [await user(server, n) for n in ("alice", "bob", "charlie", "dave")]
    room = await alice.create_room(preset="public_chat", name="Lazy")
    for c in (bob, charlie, dave):
        await join(c, room)
    await send_many(bob, room, "bob", 10)
    res = await sync(alice, filter=LAZY)
    assert members(room_entry(res, room)["state"]["events"]) - {alice.user_id} == {bob.user_id}

    # A gap: charlie's messages never reach alice's timeline, so neither does his membership.
    await send_many(charlie, room, "charlie", 10)
    await send_many(dave, room, "dave", 10)
    res = await sync(alice, res["next_batch"], LAZY)
    entry = room_entry(res, room)
    assert entry["timeline"]["limited"] is True
    assert members(entry["state"]["events"]) == {dave.user_id}

    # Already sent: not again (no include_redundant_members)...
    await dave.send_message(room, "dave again")
    res = await sync(alice, res["next_batch"], LAZY)
    assert members(room_entry(res, room)["state"]["events"]) == set()
    # ... unless asked for.
    redundant = {"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}}
    await dave.send_message(room, "dave once more")
    res2 = await sync(alice, res["next_batch"], redundant)
    assert members(room_entry(res2, room)["state"]["events"]) == {dave.user_id}

    # The sender's membership changed in a gap: the new one is sent with their next message. Bob's
    # change is the one that matters; charlie's (who sends nothing in the timeline) is left out.
    await ok(dave, "PUT", f"/rooms/{room}/state/m.room.member/{dave.user_id}",
             {"membership": "join", "displayname": "Dave Two"})
    await ok(charlie, "PUT", f"/rooms/{room}/state/m.room.member/{charlie.user_id}",
             {"membership": "join", "displayname": "Charlie Two"})
    await send_many(bob, room, "filler", 12)
    await dave.send_message(room, "dave renamed")
    res = await sync(alice, res["next_batch"], LAZY)
    entry = room_entry(res, room)
    state_members = {e["state_key"]: e["content"] for e in entry["state"]["events"] if e["type"] == "m.room.member"}
    assert set(state_members) == {dave.user_id}
    assert state_members[dave.user_id]["displayname"] == "Dave Two"

    # When the change itself is in the timeline, the client has it: it is not in the state.
    await ok(dave, "PUT", f"/rooms/{room}/state/m.room.member/{dave.user_id}",
             {"membership": "join", "displayname": "Dave Three"})
    await dave.send_message(room, "dave renamed again")
    res = await sync(alice, res["next_batch"], LAZY)
    entry = room_entry(res, room)
    assert members(entry["state"]["events"]) == set()
    assert members(entry["timeline"]["events"]) == {dave.user_id}


# -- inline filters --------------------------------------------------------------------------------------
async def test_inline_json_filter_on_sync_with_an_empty_timeline(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await alice.send_message(room, "hello")
    res = await sync(alice, filter={"room": {"state": {"types": ["m.room.member"]}, "timeline": {"limit": 0}}})
    entry = room_entry(res, room)
    assert entry["timeline"]["events"] == []
    assert entry["timeline"]["limited"] is True
    assert [(e["type"], e["state_key"]) for e in entry["state"]["events"]] == [("m.room.member", alice.user_id)]
    # Uploaded filters keep the spec's rule (limit above 0).
    status, data = await alice.request("POST", f"/user/{alice.user_id}/filter", {"room": {"timeline": {"limit": 0}}})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await alice.request("GET", "/sync", params={"filter": '{"room": {"timeline": {"limit": -1}}}'})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await alice.request("GET", "/sync", params={"filter": "{not json"})
    assert (status, data["errcode"]) == (400, "M_NOT_JSON")


async def test_event_format_federation(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    sent = await alice.send_message(room, "in pdu form")
    fed = {"event_format": "federation", "room": {"timeline": {"limit": 50}}}
    for res in (await sync(alice, filter=fed),
                await sync(alice, filter=(await ok(alice, "POST", f"/user/{alice.user_id}/filter", fed))["filter_id"])):
        events = room_entry(res, room)["timeline"]["events"]
        ev = next(e for e in events if e["event_id"] == sent)
        # The PDU's own fields, which the client format leaves out, and its ID.
        for key in ("auth_events", "prev_events", "depth", "hashes", "signatures", "room_id"):
            assert key in ev, (key, ev)
        assert ev["content"]["body"] == "in pdu form"
        assert "age" in ev["unsigned"] and ev["unsigned"].get("transaction_id")
    # The client format (the default) has none of them.
    ev = next(e for e in room_entry(await sync(alice), room)["timeline"]["events"] if e["event_id"] == sent)
    assert "auth_events" not in ev and "room_id" not in ev


async def test_inline_json_filter_on_messages(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    await alice.send_message(room, "a1")
    await bob.send_message(room, "b1")
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "t"})
    flt = json.dumps({"types": ["m.room.message"], "lazy_load_members": True})
    data = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", filter=flt)
    assert bodies(data["chunk"]) == ["b1", "a1"]
    assert all(e["type"] == "m.room.message" for e in data["chunk"])
    assert members(data["state"]) == {alice.user_id, bob.user_id}
    flt = json.dumps({"not_senders": [bob.user_id], "limit": 1})
    data = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", filter=flt)
    assert [e["type"] for e in data["chunk"]] == ["m.room.topic"]


async def set_visibility(client: Client, room: str, value: str) -> None:
    await ok(client, "PUT", f"/rooms/{room}/state/m.room.history_visibility/", {"history_visibility": value})


async def test_joined_visibility_timeline_ends_with_what_the_joiner_may_see(server: TestHomeServer) -> None:
    """sytest's "users can sync from joined rooms if joined": the message from before the change, the
    change itself (judged by the laxer of old and new), the own join, then what came after."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await alice.send_message(room, "shared")
    await set_visibility(alice, room, "joined")
    await alice.send_message(room, "pre_join")
    await join(bob, room)
    await alice.send_message(room, "post_join")
    last = room_entry(await sync(bob), room)["timeline"]["events"][-4:]
    assert [e["type"] for e in last] == ["m.room.message", "m.room.history_visibility", "m.room.member",
                                         "m.room.message"]
    assert [last[0]["content"]["body"], last[3]["content"]["body"]] == ["shared", "post_join"]
    assert last[2]["state_key"] == bob.user_id


async def test_history_visibility_changes_seen_on_boundaries(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    for value, body in (("joined", "1"), ("invited", "2"), ("shared", "3")):
        await set_visibility(alice, room, value)
        await alice.send_message(room, body)
    await join(bob, room)
    last = room_entry(await sync(bob), room)["timeline"]["events"][-4:]
    assert [(e["type"], e["content"].get("history_visibility") or e["content"].get("body")) for e in last[:3]] == [
        ("m.room.history_visibility", "joined"), ("m.room.history_visibility", "shared"), ("m.room.message", "3")]
    assert last[3]["type"] == "m.room.member"
