"""GET /sync and the filter endpoints, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from hs.streams.tokens import StreamToken
from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]


# -- helpers -------------------------------------------------------------------------------------------------


async def invite(client: Client, room_id: str, user_id: str) -> None:
    await ok(client, "POST", f"/rooms/{room_id}/invite", {"user_id": user_id})


async def join(client: Client, room_id: str) -> None:
    await ok(client, "POST", f"/rooms/{room_id}/join", {})


async def leave(client: Client, room_id: str) -> None:
    await ok(client, "POST", f"/rooms/{room_id}/leave", {})


async def set_state(client: Client, room_id: str, etype: str, content: Json, state_key: str = "") -> str:
    data = await ok(client, "PUT", f"/rooms/{room_id}/state/{etype}/{state_key}", content)
    return str(data["event_id"])


async def sync(client: Client, since: str | None = None, timeout: int = 0, filter: Any = None,
               **params: str) -> Json:
    if filter is not None:
        params["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
    return await client.sync(since, timeout, **params)


async def sync_error(client: Client, **params: str) -> tuple[int, Json]:
    status, data = await client.request("GET", "/sync", params=params)
    assert status != 200, data
    return status, data


def timeline(response: Json, room_id: str, section: str = "join") -> list[Json]:
    return list(response["rooms"][section][room_id]["timeline"]["events"])


def state(response: Json, room_id: str, section: str = "join") -> list[Json]:
    return list(response["rooms"][section][room_id]["state"]["events"])


def bodies(events: list[Json]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"]


def keys(events: list[Json]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in events if "state_key" in e}


async def send_many(client: Client, room_id: str, n: int, prefix: str = "m") -> list[str]:
    return [await client.send_message(room_id, f"{prefix}{i}") for i in range(n)]


# -- initial sync ----------------------------------------------------------------------------------------------
async def test_initial_sync_of_a_new_room_has_everything_in_the_timeline(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Hello")
    sent = await send_many(alice, room, 2)
    res = await sync(alice)
    assert res["next_batch"].startswith("s")
    for section in ("presence", "to_device"):
        assert isinstance(res[section]["events"], list)  # filled by the presence / to-device features
    # The only global account data of a new user: their push rules (always sent initially).
    assert [e["type"] for e in res["account_data"]["events"]] == ["m.push_rules"]
    assert set(res["rooms"]) >= {"join", "invite", "leave"}
    entry = res["rooms"]["join"][room]
    events = entry["timeline"]["events"]
    # The room's whole history fits in the default limit of 10: the timeline starts with the create
    # event, so the state at its start is empty.
    assert events[0]["type"] == "m.room.create"
    assert [e["event_id"] for e in events[-2:]] == sent
    assert entry["timeline"]["limited"] is False
    assert entry["state"]["events"] == []
    assert ("m.room.name", "") in keys(events)
    assert all("room_id" not in e for e in events)
    assert entry["ephemeral"] == {"events": []}
    assert entry["account_data"] == {"events": []}
    assert entry["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert entry["summary"]["m.joined_member_count"] == 1
    assert entry["summary"]["m.invited_member_count"] == 0
    # Own sends carry the transaction ID for the sending device.
    assert "transaction_id" in events[-1]["unsigned"]


async def test_initial_sync_limited_timeline_has_state_at_its_start(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Busy", topic="stuff")
    sent = await send_many(alice, room, 15)
    res = await sync(alice)
    entry = res["rooms"]["join"][room]
    assert entry["timeline"]["limited"] is True
    assert [e["event_id"] for e in entry["timeline"]["events"]] == sent[-10:]
    state_keys = keys(entry["state"]["events"])
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", alice.user_id),
            ("m.room.power_levels", ""), ("m.room.join_rules", "")} <= state_keys
    assert entry["timeline"]["prev_batch"]


async def test_prev_batch_paginates_to_the_earlier_events(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    sent = await send_many(alice, room, 12)
    res = await sync(alice, filter={"room": {"timeline": {"limit": 4}}})
    tl = res["rooms"]["join"][room]["timeline"]
    assert [e["event_id"] for e in tl["events"]] == sent[-4:]
    assert tl["limited"] is True
    page = await ok(alice, "GET", f"/rooms/{room}/messages", None, **{"from": tl["prev_batch"], "dir": "b",
                                                                     "limit": "5"})
    assert [e["event_id"] for e in page["chunk"]] == list(reversed(sent[-9:-4]))

    # The same from an incremental sync's limited timeline: the gap is exactly what /messages returns.
    since = res["next_batch"]
    more = await send_many(alice, room, 7, "n")
    inc = await sync(alice, since, filter={"room": {"timeline": {"limit": 3}}})
    tl = inc["rooms"]["join"][room]["timeline"]
    assert tl["limited"] is True
    assert [e["event_id"] for e in tl["events"]] == more[-3:]
    page = await ok(alice, "GET", f"/rooms/{room}/messages", None, **{"from": tl["prev_batch"], "dir": "b",
                                                                     "limit": "4"})
    assert [e["event_id"] for e in page["chunk"]] == list(reversed(more[:4]))


# -- incremental sync -------------------------------------------------------------------------------------------
async def test_incremental_sync_returns_only_new_events(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    other = await alice.create_room()
    first = await sync(alice)
    e1 = await alice.send_message(room, "one")
    e2 = await alice.send_message(room, "two")
    inc = await sync(alice, first["next_batch"])
    assert inc["next_batch"] != first["next_batch"]
    assert list(inc["rooms"]["join"]) == [room]  # the quiet room is not mentioned
    entry = inc["rooms"]["join"][room]
    assert [e["event_id"] for e in entry["timeline"]["events"]] == [e1, e2]
    assert entry["timeline"]["limited"] is False
    assert entry["state"]["events"] == []
    assert other not in inc["rooms"]["join"]
    # Nothing new: an empty response with a token that still covers everything.
    again = await sync(alice, inc["next_batch"])
    assert again["rooms"]["join"] == {}
    e3 = await alice.send_message(room, "three")
    last = await sync(alice, again["next_batch"])
    assert [e["event_id"] for e in timeline(last, room)] == [e3]


async def test_incremental_limited_timeline_state_delta(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Before")
    first = await sync(alice)
    topic_id = await set_state(alice, room, "m.room.topic", {"topic": "in the gap"})
    await send_many(alice, room, 8)
    name_id = await set_state(alice, room, "m.room.name", {"name": "After"})
    last_msg = await alice.send_message(room, "last")
    inc = await sync(alice, first["next_batch"], filter={"room": {"timeline": {"limit": 2}}})
    entry = inc["rooms"]["join"][room]
    assert [e["event_id"] for e in entry["timeline"]["events"]] == [name_id, last_msg]
    assert entry["timeline"]["limited"] is True
    # The state delta: what changed between `since` and the start of the timeline, nothing else.
    assert [e["event_id"] for e in entry["state"]["events"]] == [topic_id]


async def test_full_state_returns_all_state_at_once(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Full")
    first = await sync(alice)
    start = time.monotonic()
    res = await sync(alice, first["next_batch"], timeout=5000, full_state="true")
    assert time.monotonic() - start < 2, "full_state must not long-poll"
    entry = res["rooms"]["join"][room]
    assert entry["timeline"]["events"] == []
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", alice.user_id)} <= keys(
        entry["state"]["events"])


async def test_tokens_never_skip_or_repeat_events_under_concurrent_sends(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    rooms = [await alice.create_room(preset="public_chat") for _ in range(2)]
    for r in rooms:
        await join(bob, r)
    res = await sync(alice)
    token = res["next_batch"]
    sent: list[str] = []
    per_sender = 30

    async def sender(client: Client, tag: str) -> None:
        for i in range(per_sender):
            # Several sends in flight at once, so positions can commit out of order.
            ids = await asyncio.gather(*(client.send_message(rooms[(i + k) % 2], f"{tag}{i}.{k}")
                                         for k in range(2)))
            sent.extend(ids)

    senders = asyncio.gather(sender(alice, "a"), sender(bob, "b"))
    seen: list[str] = []
    flt = {"room": {"timeline": {"limit": 100, "types": ["m.room.message"]}}}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await sync(alice, token, timeout=500, filter=flt)
        for entry in r["rooms"]["join"].values():
            assert not entry["timeline"]["limited"]
            seen.extend(e["event_id"] for e in entry["timeline"]["events"])
        token = r["next_batch"]
        if senders.done() and len(seen) >= len(sent):
            break
    await senders
    final = await sync(alice, token, filter=flt)
    for entry in final["rooms"]["join"].values():
        seen.extend(e["event_id"] for e in entry["timeline"]["events"])
    assert len(sent) == 2 * 2 * per_sender
    assert len(seen) == len(set(seen)), "an event was returned twice"
    assert set(seen) == set(sent), "an event was skipped"


# -- long-polling -----------------------------------------------------------------------------------------------
async def test_long_poll_returns_promptly_when_a_message_is_sent(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    since = (await sync(alice))["next_batch"]
    task = asyncio.create_task(sync(alice, since, timeout=20000))
    await asyncio.sleep(0.3)
    assert not task.done(), "the long-poll returned before anything happened"
    event_id = await bob.send_message(room, "wake up")
    sent_at = time.monotonic()
    res = await asyncio.wait_for(task, 5)
    latency = time.monotonic() - sent_at
    assert [e["event_id"] for e in timeline(res, room)] == [event_id]
    assert latency < 1.0, f"long-poll took {latency:.3f}s to notice the event"


async def test_long_poll_times_out_empty(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    await alice.create_room()
    since = (await sync(alice))["next_batch"]
    start = time.monotonic()
    res = await sync(alice, since, timeout=400)
    elapsed = time.monotonic() - start
    assert 0.35 <= elapsed < 5
    assert res["rooms"]["join"] == {}
    assert StreamToken.decode(res["next_batch"]).get("events") == StreamToken.decode(since).get("events")


async def test_long_poll_ignores_other_users_rooms(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await alice.create_room()
    bobs_room = await bob.create_room()
    since = (await sync(alice))["next_batch"]
    task = asyncio.create_task(sync(alice, since, timeout=700))
    await asyncio.sleep(0.1)
    await bob.send_message(bobs_room, "not for alice")
    res = await task
    assert res["rooms"]["join"] == {}


async def test_long_poll_wakes_on_invite(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(name="Party")
    since = (await sync(bob))["next_batch"]
    task = asyncio.create_task(sync(bob, since, timeout=20000))
    await asyncio.sleep(0.2)
    await invite(alice, room, bob.user_id)
    sent_at = time.monotonic()
    res = await asyncio.wait_for(task, 5)
    assert time.monotonic() - sent_at < 1.0
    assert room in res["rooms"]["invite"]


# -- invites, leaves, joins -----------------------------------------------------------------------------------
async def test_invite_appears_with_stripped_state(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(name="Secret", topic="hush")
    await send_many(alice, room, 3)
    since = (await sync(bob))["next_batch"]
    await invite(alice, room, bob.user_id)
    for res in (await sync(bob, since), await sync(bob)):
        assert room not in res["rooms"]["join"]
        events = res["rooms"]["invite"][room]["invite_state"]["events"]
        by_key = {(e["type"], e["state_key"]): e for e in events}
        assert ("m.room.create", "") in by_key
        assert by_key[("m.room.name", "")]["content"] == {"name": "Secret"}
        assert ("m.room.join_rules", "") in by_key
        member = by_key[("m.room.member", bob.user_id)]
        assert member["content"]["membership"] == "invite"
        assert member["sender"] == alice.user_id
        assert not any(e["type"] == "m.room.message" for e in events)
        # Stripped state carries only these keys.
        assert set(by_key[("m.room.name", "")]) == {"type", "state_key", "sender", "content"}
    # Once joined the room moves to rooms.join with full state.
    nb = (await sync(bob, since))["next_batch"]
    await join(bob, room)
    res = await sync(bob, nb)
    assert room in res["rooms"]["join"] and room not in res["rooms"]["invite"]


async def test_leave_appears_in_rooms_leave(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    since = (await sync(bob))["next_batch"]
    before = await alice.send_message(room, "before bob leaves")
    await leave(bob, room)
    after = await alice.send_message(room, "after bob left")
    res = await sync(bob, since)
    assert room not in res["rooms"]["join"]
    events = timeline(res, room, "leave")
    ids = [e["event_id"] for e in events]
    assert before in ids and after not in ids
    assert events[-1]["type"] == "m.room.member"
    assert events[-1]["state_key"] == bob.user_id
    assert events[-1]["content"]["membership"] == "leave"
    # Reported once; the next sync does not mention the room.
    again = await sync(bob, res["next_batch"])
    assert room not in again["rooms"]["leave"] and room not in again["rooms"]["join"]
    # Initial syncs leave it out, unless the filter asks for left rooms.
    assert room not in (await sync(bob))["rooms"]["leave"]
    archived = await sync(bob, filter={"room": {"include_leave": True}})
    assert archived["rooms"]["leave"][room]["timeline"]["events"][-1]["content"]["membership"] == "leave"
    assert after not in [e["event_id"] for e in timeline(archived, room, "leave")]


@pytest.mark.parametrize("action", ["kick", "ban"])
async def test_kick_and_ban_appear_in_rooms_leave(server: TestHomeServer, action: str) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    since = (await sync(bob))["next_batch"]
    await ok(alice, "POST", f"/rooms/{room}/{action}", {"user_id": bob.user_id, "reason": "bye"})
    res = await sync(bob, since)
    assert room not in res["rooms"]["join"]
    last = timeline(res, room, "leave")[-1]
    assert last["type"] == "m.room.member" and last["state_key"] == bob.user_id
    assert last["sender"] == alice.user_id
    assert last["content"]["membership"] == ("leave" if action == "kick" else "ban")


async def test_rejected_invite_appears_in_rooms_leave(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(name="No thanks")
    secret = await alice.send_message(room, "before the invite")
    await invite(alice, room, bob.user_id)
    since = (await sync(bob))["next_batch"]
    await leave(bob, room)
    res = await sync(bob, since)
    events = timeline(res, room, "leave")
    assert events[-1]["content"]["membership"] == "leave"
    assert secret not in [e["event_id"] for e in events]
    assert room not in res["rooms"]["invite"]


async def test_room_joined_mid_range_has_full_state(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat", name="Mid", topic="joined later")
    await send_many(alice, room, 12)
    since = (await sync(bob))["next_batch"]
    assert (await sync(bob, since))["rooms"]["join"] == {}
    await join(bob, room)
    hello = await alice.send_message(room, "welcome bob")
    res = await sync(bob, since)
    entry = res["rooms"]["join"][room]
    ids = [e["event_id"] for e in entry["timeline"]["events"]]
    assert ids[-1] == hello
    assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in entry["timeline"]["events"])
    state_keys = keys(entry["state"]["events"])
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""), ("m.room.power_levels", ""),
            ("m.room.member", alice.user_id)} <= state_keys
    assert entry["summary"]["m.joined_member_count"] == 2


async def test_summary_heroes_for_unnamed_room(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    await invite(alice, room, carol.user_id)
    summary = (await sync(alice))["rooms"]["join"][room]["summary"]
    assert summary["m.heroes"] == [bob.user_id, carol.user_id]
    assert summary["m.joined_member_count"] == 2
    assert summary["m.invited_member_count"] == 1
    named = await alice.create_room(name="Named")
    assert "m.heroes" not in (await sync(alice))["rooms"]["join"][named]["summary"]


# -- filters ---------------------------------------------------------------------------------------------------
async def test_filter_timeline_limit(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    sent = await send_many(alice, room, 6)
    res = await sync(alice, filter={"room": {"timeline": {"limit": 3}}})
    assert [e["event_id"] for e in timeline(res, room)] == sent[-3:]
    assert res["rooms"]["join"][room]["timeline"]["limited"] is True


async def test_filter_types_and_not_types(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(name="Typed")
    await alice.send_message(room, "a")
    await set_state(alice, room, "m.room.topic", {"topic": "t"})
    await alice.send_message(room, "b")
    only_messages = await sync(alice, filter={"room": {"timeline": {"types": ["m.room.message"], "limit": 5}}})
    events = timeline(only_messages, room)
    assert [e["type"] for e in events] == ["m.room.message", "m.room.message"]
    # The filtered timeline still fills up to the limit from older events, and is not `limited` when
    # it holds everything that matches.
    assert only_messages["rooms"]["join"][room]["timeline"]["limited"] is False
    wildcard = await sync(alice, filter={"room": {"timeline": {"types": ["m.room.*"],
                                                               "not_types": ["m.room.member", "m.room.message"]}}})
    types = {e["type"] for e in timeline(wildcard, room)}
    assert "m.room.member" not in types and "m.room.message" not in types
    assert {"m.room.create", "m.room.topic", "m.room.name"} <= types

    # Incrementally, a state change the filtered timeline hides still reaches the client via `state`.
    since = only_messages["next_batch"]
    topic2 = await set_state(alice, room, "m.room.topic", {"topic": "t2"})
    inc = await sync(alice, since, filter={"room": {"timeline": {"types": ["m.room.message"]}}})
    entry = inc["rooms"]["join"][room]
    assert entry["timeline"]["events"] == []
    assert [e["event_id"] for e in entry["state"]["events"]] == [topic2]


async def test_filter_senders(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await join(bob, room)
    await alice.send_message(room, "from alice")
    await bob.send_message(room, "from bob")
    res = await sync(alice, filter={"room": {"timeline": {"not_senders": [alice.user_id]}}})
    assert {e["sender"] for e in timeline(res, room)} == {bob.user_id}
    res = await sync(alice, filter={"room": {"timeline": {"senders": [alice.user_id], "types": ["m.room.message"]}}})
    assert bodies(timeline(res, room)) == ["from alice"]


async def test_filter_rooms_and_not_rooms(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    r1 = await alice.create_room()
    r2 = await alice.create_room()
    only = await sync(alice, filter={"room": {"rooms": [r1]}})
    assert set(only["rooms"]["join"]) == {r1}
    without = await sync(alice, filter={"room": {"not_rooms": [r1]}})
    assert set(without["rooms"]["join"]) == {r2}
    # Incrementally too: activity in an excluded room does not wake or appear.
    since = without["next_batch"]
    await alice.send_message(r1, "excluded")
    res = await sync(alice, since, timeout=300, filter={"room": {"not_rooms": [r1]}})
    assert res["rooms"]["join"] == {}


async def test_filter_lazy_load_members(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room = await alice.create_room(preset="public_chat", name="Lazy")
    await join(bob, room)
    await join(carol, room)
    await send_many(bob, room, 3, "bob")
    lazy = {"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 2}}}
    res = await sync(alice, filter=lazy)
    entry = res["rooms"]["join"][room]
    assert {e["sender"] for e in entry["timeline"]["events"]} == {bob.user_id}
    members = {e["state_key"] for e in entry["state"]["events"] if e["type"] == "m.room.member"}
    assert members == {bob.user_id, alice.user_id}
    assert ("m.room.name", "") in keys(entry["state"]["events"])
    # Without lazy-loading every member is there.
    full = await sync(alice, filter={"room": {"timeline": {"limit": 2}}})
    assert {carol.user_id, bob.user_id, alice.user_id} <= {
        e["state_key"] for e in state(full, room) if e["type"] == "m.room.member"}

    # Incrementally: a new sender's member event comes along; an already sent one is not repeated...
    since = res["next_batch"]
    await carol.send_message(room, "carol speaks")
    await bob.send_message(room, "bob again")
    inc = await sync(alice, since, filter=lazy)
    members = {e["state_key"] for e in state(inc, room) if e["type"] == "m.room.member"}
    assert members == {carol.user_id}
    # ...unless redundant members are asked for.
    since = inc["next_batch"]
    await bob.send_message(room, "bob once more")
    redundant = {"room": {"state": {"lazy_load_members": True, "include_redundant_members": True}}}
    inc = await sync(alice, since, filter=redundant)
    assert {e["state_key"] for e in state(inc, room) if e["type"] == "m.room.member"} == {bob.user_id}


async def test_filter_event_fields(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await alice.send_message(room, "fields")
    res = await sync(alice, filter={"event_fields": ["type", "content.body"],
                                    "room": {"timeline": {"types": ["m.room.message"]}}})
    assert timeline(res, room) == [{"type": "m.room.message", "content": {"body": "fields"}}]


# -- filter endpoints ---------------------------------------------------------------------------------------------
async def test_filter_create_and_get(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    body = {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}, "event_format": "client"}
    created = await ok(alice, "POST", f"/user/{alice.user_id}/filter", body)
    fid = created["filter_id"]
    assert isinstance(fid, str) and not fid.startswith("{")
    assert await ok(alice, "GET", f"/user/{alice.user_id}/filter/{fid}") == body
    second = await ok(alice, "POST", f"/user/{alice.user_id}/filter", {})
    assert second["filter_id"] != fid

    # Other users' filters: neither readable nor creatable.
    status, data = await bob.request("GET", f"/user/{alice.user_id}/filter/{fid}")
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN")
    status, data = await bob.request("POST", f"/user/{alice.user_id}/filter", body)
    assert (status, data["errcode"]) == (403, "M_FORBIDDEN")
    # Filter IDs are per user: bob has no filter with alice's ID... until he makes one.
    for missing in ("12345", "nope"):
        status, data = await alice.request("GET", f"/user/{alice.user_id}/filter/{missing}")
        assert (status, data["errcode"]) == (404, "M_NOT_FOUND")
    status, data = await alice.request("POST", f"/user/{alice.user_id}/filter", {"room": {"timeline": []}})
    assert (status, data["errcode"]) == (400, "M_BAD_JSON")
    status, data = await alice.request("POST", f"/user/{alice.user_id}/filter", {"room": {"timeline": {"limit": 0}}})
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await alice.request("POST", f"/user/{alice.user_id}/filter", raw=b"not json")
    assert (status, data["errcode"]) == (400, "M_NOT_JSON")
    status, _ = await alice.request("POST", f"/user/{alice.user_id}/filter", {}, auth=False)
    assert status == 401

    # A stored filter applies to /sync by ID.
    room = await alice.create_room()
    sent = await send_many(alice, room, 3)
    res = await sync(alice, filter=fid)
    assert [e["event_id"] for e in timeline(res, room)] == sent[-2:]
    status, data = await sync_error(bob, filter=fid)  # bob has no such filter
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")


# -- errors ------------------------------------------------------------------------------------------------------
async def test_sync_parameter_errors(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    for bad_since in ("garbage", "s1_x", "t1-2", "s-5"):
        status, data = await sync_error(alice, since=bad_since)
        assert (status, data["errcode"]) == (400, "M_INVALID_PARAM"), bad_since
    status, data = await sync_error(alice, filter="999")
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await sync_error(alice, filter="not-an-id")
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await sync_error(alice, filter="{not json")
    assert (status, data["errcode"]) == (400, "M_NOT_JSON")
    status, data = await sync_error(alice, filter='{"room": {"timeline": {"limit": "ten"}}}')
    assert (status, data["errcode"]) == (400, "M_BAD_JSON")
    status, data = await sync_error(alice, set_presence="away")
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    for presence in ("online", "offline", "unavailable"):
        assert (await alice.request("GET", "/sync", params={"set_presence": presence}))[0] == 200
    status, data = await sync_error(alice, timeout="soon")
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, data = await sync_error(alice, full_state="maybe")
    assert (status, data["errcode"]) == (400, "M_INVALID_PARAM")
    status, _ = await alice.request("GET", "/sync", auth=False)
    assert status == 401


async def test_since_ahead_of_the_server_is_not_an_error(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    # Ahead on the events stream, current on the others.
    ahead = "s999999_" + (await sync(alice))["next_batch"].split("_", 1)[1]
    res = await sync(alice, ahead)
    assert res["rooms"]["join"] == {}
    # Never moves a client backwards (streams the token was behind on may move forwards).
    got = [int(p) for p in res["next_batch"][1:].split("_")]
    assert got[0] == 999999 and all(g >= int(p) for g, p in zip(got, ahead[1:].split("_"), strict=False))
    start = time.monotonic()
    await alice.send_message(room, "hi")
    res = await sync(alice, ahead, timeout=300)
    assert time.monotonic() - start >= 0.25
    assert res["rooms"]["join"] == {}


async def test_sync_works_on_the_r0_prefix_with_a_unique_request(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    marker = uuid.uuid4().hex
    await alice.send_message(room, marker)
    status, data = await alice.request("GET", "/_matrix/client/r0/sync")
    assert status == 200
    assert marker in bodies(timeline(data, room))
