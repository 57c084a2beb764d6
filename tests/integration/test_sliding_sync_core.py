"""Sliding sync's core over real HTTP, both shapes, SQLite and PostgreSQL: Element X's room list
growth, incremental responses with only the changed room, long-polling, positions (unknown, retried)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.harness import Client, TestHomeServer, ok, user

Json = dict[str, Any]
UNSTABLE = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
STABLE = "/_matrix/client/v4/sync"


async def ss(client: Client, body: Json, pos: str | None = None, timeout: int = 0, shape: str = "unstable",
             ) -> Json:
    """One sliding sync request that must succeed, in either shape."""
    status, data = await ss_raw(client, body, pos, timeout, shape)
    assert status == 200, data
    return data  # type: ignore[no-any-return]


async def ss_raw(client: Client, body: Json, pos: str | None = None, timeout: int = 0, shape: str = "unstable",
                 ) -> tuple[int, Any]:
    if shape == "unstable":
        params = {"timeout": str(timeout)}
        if pos is not None:
            params["pos"] = pos
        return await client.request("POST", UNSTABLE, body, params=params)
    full = {**body, "timeout": timeout}
    if pos is not None:
        full["pos"] = pos
    return await client.request("POST", STABLE, full)


def a_list(rng: list[int], timeline: int, shape: str, required_state: list[list[str]] | None = None) -> Json:
    rs = required_state or [["m.room.name", ""]]
    if shape == "unstable":
        return {"ranges": [rng], "timeline_limit": timeline, "required_state": rs}
    return {"range": rng, "timeline_limit": timeline, "required_state": {"include": rs}}


def timeline(room: Json, shape: str) -> list[Json]:
    return list(room.get("timeline" if shape == "unstable" else "timeline_events", []))


@pytest.fixture(params=["unstable", "v4"])
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_element_x_growth_and_incremental(make_server: Any, engine: str, shape: str) -> None:
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    rooms = []
    for i in range(5):
        rooms.append(await alice.create_room(name=f"room {i}"))
    await alice.send_message(rooms[1], "newest")  # room 1 becomes the most recent

    first = await ss(alice, {"lists": {"all": a_list([0, 2], 1, shape)}}, shape=shape)
    assert first["lists"]["all"]["count"] == 5
    expected_order = [rooms[1], rooms[4], rooms[3]]
    if shape == "unstable":
        assert first["lists"]["all"]["ops"][0]["room_ids"] == expected_order
    assert set(first["rooms"]) == set(expected_order)
    r1 = first["rooms"][rooms[1]]
    assert r1["initial"] is True
    assert r1["name"] == "room 1"
    assert [e["content"].get("body") for e in timeline(r1, shape)] == ["newest"]
    assert r1["limited"] is True
    assert r1["joined_count"] == 1
    assert [e["type"] for e in r1["required_state"]] == ["m.room.name"]
    assert r1["bump_stamp"] > first["rooms"][rooms[4]]["bump_stamp"]
    if shape == "v4":
        assert r1["membership"] == "join"

    # Growth: [0, 99] with timeout 0 sends only the rooms not sent yet.
    grown = await ss(alice, {"lists": {"all": a_list([0, 99], 1, shape)}}, pos=first["pos"], shape=shape)
    assert set(grown["rooms"]) == {rooms[0], rooms[2]}
    assert all(r["initial"] for r in grown["rooms"].values())

    # A room subscription with a longer timeline: that room's timeline again, expanded.
    sub = {"lists": {"all": a_list([0, 99], 1, shape)},
           "room_subscriptions": {rooms[3]: {"timeline_limit": 20,
                                             "required_state": [["m.room.create", ""]] if shape == "unstable"
                                             else {"include": [["m.room.create", ""]]}}}}
    subbed = await ss(alice, sub, pos=grown["pos"], shape=shape)
    assert set(subbed["rooms"]) == {rooms[3]}
    events = timeline(subbed["rooms"][rooms[3]], shape)
    assert events[0]["type"] == "m.room.create"
    assert len(events) > 1

    # Nothing new: the same pos comes back at once with timeout 0, no rooms.
    idle = await ss(alice, sub, pos=subbed["pos"], shape=shape)
    assert idle["rooms"] == {}

    # A message: only that room, with the one new event, num_live 1.
    await alice.send_message(rooms[0], "hello")
    inc = await ss(alice, sub, pos=idle["pos"], shape=shape)
    assert list(inc["rooms"]) == [rooms[0]]
    entry = inc["rooms"][rooms[0]]
    assert [e["content"].get("body") for e in timeline(entry, shape)] == ["hello"]
    assert entry["num_live"] == 1
    assert "initial" not in entry
    if shape == "unstable":
        assert inc["lists"]["all"]["ops"][0]["room_ids"][0] == rooms[0]


async def test_long_poll_woken_by_message(make_server: Any, engine: str, shape: str) -> None:
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/rooms/{room}/join", {})
    body = {"lists": {"all": a_list([0, 9], 5, shape)}}
    first = await ss(alice, body, shape=shape)
    poll = asyncio.create_task(ss(alice, body, pos=first["pos"], timeout=20000, shape=shape))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await bob.send_message(room, "wake up")
    woken = await asyncio.wait_for(poll, 10)
    assert [e["content"].get("body") for e in timeline(woken["rooms"][room], shape)] == ["wake up"]
    assert woken["rooms"][room]["num_live"] == 1


async def test_positions_unknown_and_retried(make_server: Any, engine: str, shape: str) -> None:
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    room = await alice.create_room()
    body = {"lists": {"all": a_list([0, 9], 5, shape)}}
    status, data = await ss_raw(alice, body, pos="12345678", shape=shape)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
    status, data = await ss_raw(alice, body, pos="not a position", shape=shape)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")

    first = await ss(alice, body, shape=shape)
    await alice.send_message(room, "one")
    second = await ss(alice, body, pos=first["pos"], shape=shape)
    assert second["pos"] != first["pos"]
    # The response to `second` was lost: the client retries first's pos and gets the same message.
    retried = await ss(alice, body, pos=first["pos"], shape=shape)
    assert [e["content"].get("body") for e in timeline(retried["rooms"][room], shape)] == ["one"]
    # The client goes on from the retried one; the other answer to first's pos is gone then.
    await alice.send_message(room, "two")
    third = await ss(alice, body, pos=retried["pos"], shape=shape)
    assert [e["content"].get("body") for e in timeline(third["rooms"][room], shape)] == ["two"]
    status, data = await ss_raw(alice, body, pos=second["pos"], shape=shape)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
    # Two positions back is too old.
    await alice.send_message(room, "three")
    await ss(alice, body, pos=third["pos"], shape=shape)
    status, data = await ss_raw(alice, body, pos=first["pos"], shape=shape)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
    # A connection is per user: another user's pos is unknown to them.
    bob = await user(server, "bob")
    status, data = await ss_raw(bob, body, pos=third["pos"], shape=shape)
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")


async def test_versions_advertises_sliding_sync(make_server: Any, engine: str) -> None:
    server: TestHomeServer = await make_server(engine)
    c = server.client()
    status, data = await c.request("GET", "/_matrix/client/versions")
    await c.close()
    assert status == 200
    assert data["unstable_features"]["org.matrix.simplified_msc3575"] is True


async def test_quiet_long_poll_keeps_pos_and_ignores_rooms_out_of_range(make_server: Any, engine: str,
                                                                       shape: str) -> None:
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    old = await alice.create_room(name="old")
    await alice.send_message(old, "old message")
    new = await alice.create_room(name="new")
    await alice.send_message(new, "new message")
    body = {"lists": {"top": a_list([0, 0], 1, shape)}}
    first = await ss(alice, body, shape=shape)
    assert list(first["rooms"]) == [new]
    # A reaction (not a bump event) in the room out of range: nothing for this list.
    await ok(alice, "PUT", f"/rooms/{old}/send/m.reaction/t1",
             {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "k"}})
    quiet = await ss(alice, body, pos=first["pos"], timeout=300, shape=shape)
    assert quiet["rooms"] == {}
    assert quiet["pos"] == first["pos"]
    # A message there bumps it into range: it comes from scratch, the other room leaves the range.
    await alice.send_message(old, "bump")
    bumped = await ss(alice, body, pos=quiet["pos"], shape=shape)
    assert list(bumped["rooms"]) == [old]
    assert bumped["rooms"][old]["initial"] is True
    assert [e["content"].get("body") for e in timeline(bumped["rooms"][old], shape)] == ["bump"]
    # Back into range later, the first room gets only what it missed (not initial).
    await alice.send_message(new, "missed")
    await alice.send_message(new, "latest")
    back = await ss(alice, body, pos=bumped["pos"], shape=shape)
    assert list(back["rooms"]) == [new]
    entry = back["rooms"][new]
    assert "initial" not in entry
    assert [e["content"].get("body") for e in timeline(entry, shape)] == ["latest"]
    assert entry["limited"] is True


async def test_invite_then_join_and_leave(make_server: Any, engine: str, shape: str) -> None:
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(name="club")
    await ok(alice, "POST", f"/rooms/{room}/invite", {"user_id": bob.user_id})
    body = {"lists": {"all": a_list([0, 9], 5, shape)}}
    first = await ss(bob, body, shape=shape)
    entry = first["rooms"][room]
    stripped = entry["invite_state" if shape == "unstable" else "stripped_state"]
    assert {"m.room.name", "m.room.member"} <= {e["type"] for e in stripped}
    assert entry["name"] == "club"
    assert "timeline" not in entry and "timeline_events" not in entry

    await ok(bob, "POST", f"/rooms/{room}/join", {})
    joined = await ss(bob, body, pos=first["pos"], shape=shape)
    entry = joined["rooms"][room]
    assert entry["initial"] is True
    assert entry["joined_count"] == 2
    if shape == "v4":
        assert entry["membership"] == "join"

    await ok(bob, "POST", f"/rooms/{room}/leave", {})
    await alice.send_message(room, "after bob left")
    left = await ss(bob, body, pos=joined["pos"], shape=shape)
    entry = left["rooms"][room]
    events = timeline(entry, shape)
    assert events[-1]["type"] == "m.room.member" and events[-1]["content"]["membership"] == "leave"
    assert "after bob left" not in str(left)
    # Left by himself: the room shows once, then leaves the list.
    later = await ss(bob, body, pos=left["pos"], shape=shape)
    assert later["lists"]["all"]["count"] == 0


async def test_a_long_poll_given_up_does_not_replace_the_newer_position(make_server: Any, engine: str,
                                                                       shape: str) -> None:
    """Element X drops its long-poll and asks again from the same pos whenever its lists change; the
    old request's late answer must not replace the position the client went on with."""
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    room = await alice.create_room()
    small = {"lists": {"all": a_list([0, 0], 1, shape)}}
    big = {"lists": {"all": a_list([0, 9], 1, shape)}}
    first = await ss(alice, small, shape=shape)
    given_up = asyncio.create_task(ss_raw(alice, small, pos=first["pos"], timeout=20000, shape=shape))
    await asyncio.sleep(0.2)
    second = await ss(alice, big, pos=first["pos"], shape=shape)
    current = asyncio.create_task(ss(alice, big, pos=second["pos"], timeout=20000, shape=shape))
    await asyncio.sleep(0.2)
    await alice.send_message(room, "both wake")
    woken = await asyncio.wait_for(current, 10)
    assert [e["content"].get("body") for e in timeline(woken["rooms"][room], shape)] == ["both wake"]
    status, data = await asyncio.wait_for(given_up, 10)
    assert status == 400 and data["errcode"] == "M_UNKNOWN_POS"  # stale (a real client is gone by then)
    await alice.send_message(room, "next")
    after = await ss(alice, big, pos=woken["pos"], shape=shape)
    assert [e["content"].get("body") for e in timeline(after["rooms"][room], shape)] == ["next"]


async def test_two_answers_to_one_pos_are_both_usable(make_server: Any, engine: str, shape: str) -> None:
    """Two requests continuing from one pos (a long-poll the client did not close, and the request it
    went on with) both keep their answers: the client may continue from either, whichever it took,
    and gets what came after it, once; the other is dropped once it has gone on."""
    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    room = await alice.create_room()
    body = {"lists": {"all": a_list([0, 9], 5, shape)}}

    def bodies(res: Json) -> list[str]:
        return [e["content"].get("body") for e in timeline(res["rooms"][room], shape)]

    pos = (await ss(alice, body, shape=shape))["pos"]
    for chosen in (0, 1):  # the client goes on from the first answer, then (next round) the second
        await alice.send_message(room, f"new {chosen}")
        answers = [await ss(alice, body, pos=pos, shape=shape) for _ in range(2)]
        assert [bodies(a) for a in answers] == [[f"new {chosen}"]] * 2
        await alice.send_message(room, f"after {chosen}")
        went_on = await ss(alice, body, pos=answers[chosen]["pos"], shape=shape)
        assert bodies(went_on) == [f"after {chosen}"]
        status, data = await ss_raw(alice, body, pos=answers[1 - chosen]["pos"], shape=shape)
        assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
        pos = went_on["pos"]


async def test_idle_connections_expire_and_a_device_keeps_a_bounded_number(make_server: Any, engine: str) -> None:
    """A connection unused for over a week is dropped by the background tasks (its `pos` then answers
    M_UNKNOWN_POS, so the client starts over) while a recent one stays; a device keeps at most
    MAX_CONNECTIONS_PER_DEVICE connections, the least recently used going first."""
    from hs.db.stores.sliding_sync import MAX_CONNECTIONS_PER_DEVICE

    server: TestHomeServer = await make_server(engine)
    alice = await user(server, "alice")
    await alice.create_room(name="r")
    body = {"lists": {"l": a_list([0, 9], 1, "unstable")}}
    old = await ss(alice, {**body, "conn_id": "old"})
    recent = await ss(alice, {**body, "conn_id": "recent"})
    week_and_a_day = 8 * 24 * 3600 * 1000
    await server.hs.db.execute("UPDATE sliding_sync_connections SET last_used_ts = last_used_ts - $1"
                               " WHERE conn_id = 'old'", week_and_a_day)
    assert await server.hs.background.expire_sliding_sync_connections() == 1
    status, data = await ss_raw(alice, {**body, "conn_id": "old"}, pos=old["pos"])
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
    await ss(alice, {**body, "conn_id": "recent"}, pos=recent["pos"])

    first = await ss(alice, {**body, "conn_id": "c0"})
    for i in range(1, MAX_CONNECTIONS_PER_DEVICE + 1):
        await ss(alice, {**body, "conn_id": f"c{i}"})
    status, data = await ss_raw(alice, {**body, "conn_id": "c0"}, pos=first["pos"])
    assert (status, data["errcode"]) == (400, "M_UNKNOWN_POS")
    count = await server.hs.db.fetchval("SELECT COUNT(*) FROM sliding_sync_connections")
    assert count == MAX_CONNECTIONS_PER_DEVICE


async def test_invites_from_ignored_users_are_not_listed(make_server: Any, engine: str) -> None:
    """The spec: invites from ignored users are not sent to the client; sliding sync's lists leave them
    out, and list them again once the inviter is no longer ignored."""
    server: TestHomeServer = await make_server(engine)
    alice, bob = await user(server, "alice"), await user(server, "bob")
    mine = await alice.create_room(name="mine")
    invited = await bob.create_room(name="bob's")
    await ok(bob, "POST", f"/rooms/{invited}/invite", {"user_id": alice.user_id})
    body = {"lists": {"all": a_list([0, 9], 1, "unstable")}}
    connections = iter(range(100))

    async def listed() -> list[str]:  # a fresh connection's first response
        res = await ss(alice, {**body, "conn_id": f"c{next(connections)}"})
        return list(res["lists"]["all"]["ops"][0]["room_ids"])

    assert set(await listed()) == {mine, invited}
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list",
             {"ignored_users": {bob.user_id: {}}})
    assert await listed() == [mine]
    await ok(alice, "PUT", f"/user/{alice.user_id}/account_data/m.ignored_user_list", {"ignored_users": {}})
    assert set(await listed()) == {mine, invited}
