"""Bad input to the room endpoints gets the spec's status and errcode, and stores nothing."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, TestHomeServer
from tests.integration.test_rooms import close, q, timeline, users


async def count_events(server: TestHomeServer) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM events"))


async def count_rooms(server: TestHomeServer) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM rooms"))


async def expect(c: Client, method: str, path: str, status: int, errcode: str, body: Any = None,
                 **kwargs: Any) -> None:
    got, data = await c.request(method, path, body, **kwargs)
    assert (got, data.get("errcode") if isinstance(data, dict) else data) == (status, errcode), (path, data)


async def test_create_room_bad_input_creates_nothing(server: TestHomeServer) -> None:
    (alice,) = await users(server, "alice")
    rooms, events = await count_rooms(server), await count_events(server)
    await expect(alice, "POST", "/createRoom", 400, "M_NOT_JSON", raw=b"{not json")
    await expect(alice, "POST", "/createRoom", 400, "M_BAD_JSON", [1, 2])
    for bad in ({"name": 5}, {"topic": ["x"]}, {"preset": "party"}, {"visibility": "secret"},
                {"invite": "@bob:test.local"}, {"invite": [5]}, {"initial_state": [{"type": "x"}]},
                {"initial_state": {"type": "x", "content": {}}}, {"creation_content": "x"},
                {"power_level_content_override": []}, {"is_direct": "yes"}, {"room_version": 12},
                {"initial_state": [{"type": "x", "state_key": 1, "content": {}}]}):
        await expect(alice, "POST", "/createRoom", 400, "M_BAD_JSON", bad)
    await expect(alice, "POST", "/createRoom", 400, "M_UNSUPPORTED_ROOM_VERSION", {"room_version": "999"})
    await expect(alice, "POST", "/createRoom", 400, "M_INVALID_PARAM", {"invite": ["not-a-user"]})
    await expect(alice, "POST", "/createRoom", 400, "M_INVALID_PARAM", {"room_alias_name": "a:b"})
    await expect(alice, "POST", "/createRoom", 401, "M_MISSING_TOKEN", {}, auth=False)
    assert (await count_rooms(server), await count_events(server)) == (rooms, events)
    status, data = await alice.request("GET", "/joined_rooms")
    assert data["joined_rooms"] == []
    # An empty body is a valid request.
    status, data = await alice.request("POST", "/createRoom", raw=b"")
    assert status == 200 and data["room_id"].startswith("!")
    await close(alice)


async def test_membership_bad_input(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="private_chat")
    rid = q(room_id)
    events = await count_events(server)
    for action in ("invite", "kick", "ban", "unban"):
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_MISSING_PARAM", {})
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_MISSING_PARAM", raw=b"")
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_BAD_JSON", {"user_id": 7})
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_INVALID_PARAM", {"user_id": "bob"})
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_BAD_JSON",
                     {"user_id": bob.user_id, "reason": 5})
        await expect(alice, "POST", f"/rooms/{rid}/{action}", 400, "M_NOT_JSON", raw=b"nope")
    await expect(alice, "POST", f"/rooms/{rid}/leave", 400, "M_BAD_JSON", {"reason": {}})
    await expect(bob, "POST", f"/rooms/{rid}/join", 400, "M_BAD_JSON", {"reason": 1})
    # Unknown rooms and aliases.
    await expect(bob, "POST", f"/rooms/{q('!nope:test.local')}/join", 404, "M_NOT_FOUND")
    await expect(bob, "POST", f"/join/{q('!nope:test.local')}", 404, "M_NOT_FOUND")
    await expect(bob, "POST", f"/join/{q('#nope:test.local')}", 404, "M_NOT_FOUND")
    await expect(bob, "POST", f"/join/{q('nope')}", 400, "M_INVALID_PARAM")
    await expect(bob, "POST", f"/rooms/{q('nope')}/join", 400, "M_INVALID_PARAM")
    await expect(bob, "POST", f"/rooms/{q('!nope:test.local')}/leave", 404, "M_NOT_FOUND")
    await expect(alice, "POST", f"/rooms/{q('!nope:test.local')}/invite", 403, "M_FORBIDDEN",
                 {"user_id": bob.user_id})
    await expect(bob, "POST", f"/rooms/{q('!nope:test.local')}/forget", 404, "M_NOT_FOUND")
    # Not allowed: a non-member inviting, kicking, leaving.
    await expect(bob, "POST", f"/rooms/{rid}/invite", 403, "M_FORBIDDEN", {"user_id": bob.user_id})
    await expect(bob, "POST", f"/rooms/{rid}/kick", 403, "M_FORBIDDEN", {"user_id": alice.user_id})
    await expect(bob, "POST", f"/rooms/{rid}/leave", 403, "M_FORBIDDEN")
    await expect(alice, "POST", f"/rooms/{rid}/forget", 400, "M_UNKNOWN")
    assert await count_events(server) == events
    # Inviting someone already joined is refused by the auth rules.
    await alice.request("POST", f"/rooms/{rid}/invite", {"user_id": bob.user_id})
    await bob.request("POST", f"/rooms/{rid}/join")
    events = await count_events(server)
    await expect(alice, "POST", f"/rooms/{rid}/invite", 403, "M_FORBIDDEN", {"user_id": bob.user_id})
    assert await count_events(server) == events
    await close(alice, bob)


async def test_send_and_state_bad_input(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="private_chat")
    rid = q(room_id)
    events = await count_events(server)
    send = f"/rooms/{rid}/send/m.room.message"
    await expect(alice, "PUT", f"{send}/t1", 400, "M_NOT_JSON", raw=b"{")
    await expect(alice, "PUT", f"{send}/t2", 400, "M_NOT_JSON", raw=b"")
    await expect(alice, "PUT", f"{send}/t3", 400, "M_BAD_JSON", ["a"])
    await expect(alice, "PUT", f"{send}/t4", 400, "M_BAD_JSON", "text")
    await expect(alice, "PUT", f"/rooms/{q('room')}/send/m.room.message/t5", 400, "M_INVALID_PARAM", {})
    await expect(alice, "PUT", f"/rooms/{q('!nope:test.local')}/send/m.room.message/t6", 403, "M_FORBIDDEN",
                 {"body": "x"})
    await expect(bob, "PUT", f"{send}/t7", 403, "M_FORBIDDEN", {"body": "not a member"})
    await expect(alice, "PUT", f"{send}/t8", 413, "M_TOO_LARGE", {"body": "x" * 70000})
    await expect(alice, "PUT", f"{send}/t9", 401, "M_MISSING_TOKEN", {"body": "x"}, auth=False)
    # Canonical JSON has no floats: refused as bad JSON (it was a 500), for messages and state.
    await expect(alice, "PUT", f"{send}/t10", 400, "M_BAD_JSON", {"body": "x", "n": 1.5})
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.topic", 400, "M_BAD_JSON", {"topic": "x", "n": 0.5})
    # State: bad bodies, reserved state keys, missing membership.
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.topic", 400, "M_NOT_JSON", raw=b"[")
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.topic", 400, "M_BAD_JSON", [])
    await expect(alice, "PUT", f"/rooms/{rid}/state/org.example/{q(bob.user_id)}", 403, "M_FORBIDDEN", {})
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.member/{q(bob.user_id)}", 400, "M_BAD_JSON", {})
    await expect(bob, "PUT", f"/rooms/{rid}/state/m.room.topic", 403, "M_FORBIDDEN", {"topic": "x"})
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.canonical_alias", 400, "M_INVALID_PARAM",
                 {"alias": "bad alias"})
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.canonical_alias", 400, "M_BAD_ALIAS",
                 {"alt_aliases": ["#unknown:test.local"]})
    await expect(alice, "PUT", f"/rooms/{rid}/state/m.room.power_levels", 403, "M_FORBIDDEN",
                 {"users": {alice.user_id: "lots"}})
    # Redactions: bad reason, a non-member.
    mine = await alice.send_message(room_id, "hello")
    events += 1
    await expect(alice, "PUT", f"/rooms/{rid}/redact/{q(mine)}/r1", 400, "M_BAD_JSON", {"reason": 5})
    await expect(bob, "PUT", f"/rooms/{rid}/redact/{q(mine)}/r2", 403, "M_FORBIDDEN", {})
    assert await count_events(server) == events
    assert [e["content"].get("body") for e in await timeline(alice, room_id)][-1] == "hello"
    await close(alice, bob)


async def test_read_errors(server: TestHomeServer) -> None:
    alice, eve = await users(server, "alice", "eve")
    room_id = await alice.create_room(preset="private_chat")
    other_room = await alice.create_room(preset="private_chat")
    rid = q(room_id)
    event_id = await alice.send_message(room_id, "hi")
    other_event = await alice.send_message(other_room, "elsewhere")

    # Non-members and unknown rooms: 403 for room reads.
    unknown = q("!unknown:test.local")
    for r in (rid, unknown):
        for path in (f"/rooms/{r}/state", f"/rooms/{r}/state/m.room.name", f"/rooms/{r}/members",
                     f"/rooms/{r}/joined_members", f"/rooms/{r}/messages", f"/rooms/{r}/context/{q(event_id)}",
                     f"/rooms/{r}/aliases"):
            await expect(eve, "GET", path, 403, "M_FORBIDDEN")
    # Events: unknown, in another room, not visible -> 404.
    await expect(alice, "GET", f"/rooms/{rid}/event/{q('$nope')}", 404, "M_NOT_FOUND")
    await expect(alice, "GET", f"/rooms/{rid}/event/{q(other_event)}", 404, "M_NOT_FOUND")
    await expect(eve, "GET", f"/rooms/{rid}/event/{q(event_id)}", 404, "M_NOT_FOUND")
    await expect(alice, "GET", f"/rooms/{rid}/context/{q(other_event)}", 404, "M_NOT_FOUND")
    # Malformed room IDs.
    for path in ("/rooms/abc/state", "/rooms/abc/messages", "/rooms/abc/members", f"/rooms/abc/event/{q(event_id)}"):
        await expect(alice, "GET", path, 400, "M_INVALID_PARAM")
    # Bad query parameters.
    msgs = f"/rooms/{rid}/messages"
    await expect(alice, "GET", msgs, 400, "M_INVALID_PARAM", params={"dir": "sideways"})
    await expect(alice, "GET", msgs, 400, "M_INVALID_PARAM", params={"dir": "b", "limit": "ten"})
    await expect(alice, "GET", msgs, 400, "M_INVALID_PARAM", params={"dir": "b", "limit": "-1"})
    await expect(alice, "GET", msgs, 400, "M_INVALID_PARAM", params={"dir": "b", "from": "t1"})
    await expect(alice, "GET", msgs, 400, "M_INVALID_PARAM", params={"dir": "b", "to": "sX"})
    await expect(alice, "GET", msgs, 400, "M_NOT_JSON", params={"filter": "{"})
    await expect(alice, "GET", msgs, 400, "M_BAD_JSON", params={"filter": "[1]"})
    await expect(alice, "GET", msgs, 400, "M_BAD_JSON", params={"filter": '{"limit": 0}'})
    await expect(alice, "GET", f"/rooms/{rid}/members", 400, "M_INVALID_PARAM", params={"membership": "x"})
    await expect(alice, "GET", f"/rooms/{rid}/members", 400, "M_INVALID_PARAM", params={"not_membership": "x"})
    await expect(alice, "GET", f"/rooms/{rid}/state/m.room.name", 400, "M_INVALID_PARAM",
                 params={"format": "xml"})
    await expect(alice, "GET", f"/rooms/{rid}/context/{q(event_id)}", 400, "M_INVALID_PARAM",
                 params={"limit": "x"})
    await expect(alice, "GET", "/joined_rooms", 401, "M_MISSING_TOKEN", auth=False)
    # A limit above the cap is clamped, not refused.
    status, data = await alice.request("GET", msgs, params={"dir": "b", "limit": "5000"})
    assert status == 200 and len(data["chunk"]) > 1
    await close(alice, eve)


async def test_directory_bad_input(server: TestHomeServer) -> None:
    (alice,) = await users(server, "alice")
    room_id = await alice.create_room()
    alias = q("#a:test.local")
    await expect(alice, "PUT", f"/directory/room/{alias}", 400, "M_MISSING_PARAM", {})
    await expect(alice, "PUT", f"/directory/room/{alias}", 400, "M_BAD_JSON", {"room_id": 1})
    await expect(alice, "PUT", f"/directory/room/{alias}", 400, "M_NOT_JSON", raw=b"x")
    await expect(alice, "PUT", f"/directory/room/{alias}", 400, "M_INVALID_PARAM", {"room_id": "room"})
    await expect(alice, "PUT", f"/directory/room/{alias}", 401, "M_MISSING_TOKEN", {"room_id": room_id},
                 auth=False)
    await expect(alice, "GET", f"/directory/room/{q('#a')}", 400, "M_INVALID_PARAM")
    await expect(alice, "GET", f"/directory/room/{alias}", 404, "M_NOT_FOUND")
    await expect(alice, "DELETE", f"/directory/room/{alias}", 404, "M_NOT_FOUND")
    await expect(alice, "GET", f"/directory/list/room/{q('abc')}", 400, "M_INVALID_PARAM")
    await expect(alice, "PUT", f"/directory/list/room/{q(room_id)}", 400, "M_BAD_JSON", {"visibility": 1})
    await expect(alice, "PUT", f"/directory/list/room/{q('!x:test.local')}", 404, "M_NOT_FOUND",
                 {"visibility": "public"})
    await expect(alice, "POST", "/publicRooms", 400, "M_BAD_JSON", {"limit": "5"})
    await expect(alice, "POST", "/publicRooms", 400, "M_BAD_JSON", {"filter": []})
    await expect(alice, "POST", "/publicRooms", 400, "M_BAD_JSON", {"filter": {"generic_search_term": 5}})
    await expect(alice, "POST", "/publicRooms", 400, "M_INVALID_PARAM", {"since": "garbage"})
    await expect(alice, "GET", "/publicRooms", 400, "M_INVALID_PARAM", params={"limit": "many"})
    await expect(alice, "POST", "/publicRooms", 401, "M_MISSING_TOKEN", {}, auth=False)
    assert await server.hs.room_store.get_aliases_for_room(room_id) == []
    status, vis = await alice.request("GET", f"/directory/list/room/{q(room_id)}")
    assert vis == {"visibility": "private"}
    await close(alice)


async def test_rate_limits(make_server: Any) -> None:
    server = await make_server("sqlite", rc_message={"per_second": 0.001, "burst_count": 3},
                               rc_joins={"local": {"per_second": 0.001, "burst_count": 1}})
    alice, bob = await users(server, "alice", "bob")
    room_a = await alice.create_room(preset="public_chat")
    room_b = await alice.create_room(preset="public_chat")
    first = await alice.send_message(room_a, "m1", "txn1")
    events = await count_events(server)
    status, err = await alice.request("PUT", f"/rooms/{q(room_a)}/send/m.room.message/txn2", {"body": "m2"})
    assert status == 429 and err["errcode"] == "M_LIMIT_EXCEEDED" and err["retry_after_ms"] > 0
    assert await count_events(server) == events
    # Replaying a transaction that already went through is not another message.
    status, body = await alice.request("PUT", f"/rooms/{q(room_a)}/send/m.room.message/txn1", {"body": "m1"})
    assert (status, body) == (200, {"event_id": first})

    status, _ = await bob.request("POST", f"/rooms/{q(room_a)}/join")
    assert status == 200
    status, err = await bob.request("POST", f"/rooms/{q(room_b)}/join")
    assert status == 429 and err["errcode"] == "M_LIMIT_EXCEEDED"
    # Re-joining a room one is already in is not a join.
    status, _ = await bob.request("POST", f"/rooms/{q(room_a)}/join")
    assert status == 200
    await close(alice, bob)
