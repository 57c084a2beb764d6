"""Knocking on local rooms over real HTTP, on SQLite and PostgreSQL: POST /knock, accepting (invite),
rejecting (kick), rescinding (leave), the knocker's and the admin's /sync, rate limits and routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from hs.config import load_config
from hs.roles.proxy import route_targets
from hs.roles.routes import all_routes
from tests.harness import Client, TestHomeServer, ok, user


def q(s: str) -> str:
    return quote(s, safe="")


def knock_rules(rule: str = "knock") -> list[dict[str, Any]]:
    return [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": rule}}]


async def knock_room(c: Client, **body: Any) -> str:
    body.setdefault("initial_state", knock_rules())
    return await c.create_room(**body)


async def knock(c: Client, room: str, body: Any = None, **params: str) -> tuple[int, Any]:
    return await c.request("POST", f"/knock/{q(room)}", {} if body is None else body, params=params or None)


async def member(c: Client, room: str, user_id: str) -> dict[str, Any]:
    """The member event of `user_id`, as the room admin `c` sees it in the room state."""
    events = await ok(c, "GET", f"/rooms/{q(room)}/state")
    found = [e for e in events if e["type"] == "m.room.member" and e["state_key"] == user_id]
    assert len(found) == 1, found
    return dict(found[0])


def assert_forbidden(status: int, body: Any) -> None:
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", (status, body)


async def test_knock_on_knock_room(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    await ok(bob, "PUT", f"/profile/{q(bob.user_id)}/displayname", {"displayname": "Bob"})
    room = await knock_room(alice)  # the default room version (12)
    status, body = await knock(bob, room, {"reason": "let me in"}, via="test.local", server_name="test.local")
    assert (status, body) == (200, {"room_id": room})
    ev = await member(alice, room, bob.user_id)
    assert ev["sender"] == bob.user_id
    assert ev["content"] == {"membership": "knock", "reason": "let me in", "displayname": "Bob"}
    members = await ok(alice, "GET", f"/rooms/{q(room)}/members", membership="knock")
    assert [m["state_key"] for m in members["chunk"]] == [bob.user_id]
    # Knocking is not joining.
    assert room not in (await ok(bob, "GET", "/joined_rooms"))["joined_rooms"]
    status, body = await bob.request("PUT", f"/rooms/{q(room)}/send/m.room.message/t1", {"body": "hi"})
    assert_forbidden(status, body)
    status, body = await bob.request("POST", f"/rooms/{q(room)}/join", {})
    assert_forbidden(status, body)
    # Knocking again with the same content is a no-op; the body may be omitted entirely.
    before = ev["event_id"]
    assert await knock(bob, room, {"reason": "let me in"}) == (200, {"room_id": room})
    assert (await member(alice, room, bob.user_id))["event_id"] == before
    status, body = await bob.request("POST", f"/knock/{q(room)}")
    assert (status, body) == (200, {"room_id": room})
    after = await member(alice, room, bob.user_id)
    assert after["event_id"] != before and after["content"]["membership"] == "knock"
    assert "reason" not in after["content"]


async def test_knock_restricted_and_versions(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    for version in ("7", "10", "11"):
        room = await knock_room(alice, room_version=version)
        assert await knock(bob, room) == (200, {"room_id": room}), version
        assert (await member(alice, room, bob.user_id))["content"]["membership"] == "knock"
    restricted = [{"type": "m.room.join_rules", "state_key": "",
                   "content": {"join_rule": "knock_restricted", "allow": []}}]
    room = await knock_room(alice, initial_state=restricted)
    assert await knock(bob, room) == (200, {"room_id": room})
    # knock_restricted only exists from v10: in v8 the join rule is unknown, so knocking is refused.
    room = await knock_room(alice, room_version="8", initial_state=restricted)
    assert_forbidden(*await knock(bob, room))
    assert (await ok(alice, "GET", f"/rooms/{q(room)}/members", membership="knock"))["chunk"] == []


async def test_knock_forbidden_by_join_rule(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    public = await alice.create_room(preset="public_chat")
    private = await alice.create_room(preset="private_chat")
    for room in (public, private):
        assert_forbidden(*await knock(bob, room))
        status, _ = await bob.request("GET", f"/rooms/{q(room)}/state/m.room.member/{q(bob.user_id)}")
        assert status in (403, 404)
    members = await ok(alice, "GET", f"/rooms/{q(private)}/members")
    assert [m["state_key"] for m in members["chunk"]] == [alice.user_id]


async def test_knock_forbidden_in_room_version_without_knocking(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice, room_version="6")
    status, body = await knock(bob, room)
    assert_forbidden(status, body)
    members = await ok(alice, "GET", f"/rooms/{q(room)}/members")
    assert [m["state_key"] for m in members["chunk"]] == [alice.user_id]


async def test_knock_forbidden_when_banned_invited_or_joined(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice)
    await ok(alice, "POST", f"/rooms/{q(room)}/ban", {"user_id": bob.user_id, "reason": "spam"})
    assert_forbidden(*await knock(bob, room))
    assert (await member(alice, room, bob.user_id))["content"]["membership"] == "ban"
    # A knock then a ban: the ban stands, and knocking again is refused.
    carol = await user(server, "carol")
    assert (await knock(carol, room))[0] == 200
    await ok(alice, "POST", f"/rooms/{q(room)}/ban", {"user_id": carol.user_id})
    assert_forbidden(*await knock(carol, room))
    # Members and invitees cannot knock either.
    dave = await user(server, "dave")
    await ok(alice, "POST", f"/rooms/{q(room)}/invite", {"user_id": dave.user_id})
    assert_forbidden(*await knock(dave, room))
    assert_forbidden(*await knock(alice, room))


async def test_knock_errors(server: TestHomeServer) -> None:
    bob = await user(server, "bob")
    status, body = await knock(bob, "!nowhere:test.local")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await knock(bob, "#nowhere:test.local")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await knock(bob, "not-a-room")
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    status, body = await knock(bob, "!room:test.local", {"reason": 5})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    anon = server.client()
    status, body = await anon.request("POST", f"/knock/{q('!room:test.local')}", {})
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    await anon.close()


async def test_knock_by_alias(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice, room_alias_name="knockers")
    status, body = await knock(bob, "#knockers:test.local", {"reason": "alias"})
    assert (status, body) == (200, {"room_id": room})
    ev = await member(alice, room, bob.user_id)
    assert ev["content"]["membership"] == "knock" and ev["content"]["reason"] == "alias"
    # The r0 prefix serves it too, as the join endpoint does.
    carol = await user(server, "carol")
    status, body = await carol.request("POST", f"/_matrix/client/r0/knock/{q('#knockers:test.local')}", {})
    assert (status, body) == (200, {"room_id": room})


async def test_invite_accepts_knock_then_join(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice)
    assert (await knock(bob, room))[0] == 200
    since = (await bob.sync())["next_batch"]
    await ok(alice, "POST", f"/rooms/{q(room)}/invite", {"user_id": bob.user_id})
    ev = await member(alice, room, bob.user_id)
    assert ev["content"]["membership"] == "invite" and ev["sender"] == alice.user_id
    res = await bob.sync(since)
    assert room in res["rooms"]["invite"] and room not in res["rooms"]["knock"]
    assert await ok(bob, "POST", f"/join/{q(room)}", {}) == {"room_id": room}
    assert room in (await ok(bob, "GET", "/joined_rooms"))["joined_rooms"]
    assert (await member(alice, room, bob.user_id))["content"]["membership"] == "join"
    await bob.send_message(room, "thanks")


async def test_kick_rejects_knock(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    mallory = await user(server, "mallory")
    room = await knock_room(alice)
    assert (await knock(bob, room))[0] == 200
    # Only someone with the kick level may reject: a knocker cannot reject another knock.
    assert (await knock(mallory, room))[0] == 200
    assert_forbidden(*await mallory.request("POST", f"/rooms/{q(room)}/kick", {"user_id": bob.user_id}))
    since = (await bob.sync())["next_batch"]
    await ok(alice, "POST", f"/rooms/{q(room)}/kick", {"user_id": bob.user_id, "reason": "no"})
    ev = await member(alice, room, bob.user_id)
    assert ev["content"]["membership"] == "leave" and ev["sender"] == alice.user_id
    assert ev["content"]["reason"] == "no"
    res = await bob.sync(since, filter='{"room": {"include_leave": true}}')
    assert room not in res["rooms"]["knock"] and room not in res["rooms"]["join"]
    assert room in res["rooms"]["leave"]
    assert_forbidden(*await bob.request("POST", f"/rooms/{q(room)}/join", {}))
    # A rejected knocker may knock again.
    assert (await knock(bob, room))[0] == 200
    assert (await member(alice, room, bob.user_id))["content"]["membership"] == "knock"


async def test_leave_rescinds_knock(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice)
    assert (await knock(bob, room))[0] == 200
    since = (await bob.sync())["next_batch"]
    assert room in (await bob.sync())["rooms"]["knock"]
    await ok(bob, "POST", f"/rooms/{q(room)}/leave", {})
    ev = await member(alice, room, bob.user_id)
    assert ev["content"]["membership"] == "leave" and ev["sender"] == bob.user_id
    assert room not in (await bob.sync(since))["rooms"]["knock"]
    assert room not in (await bob.sync())["rooms"]["knock"]
    # Leaving again changes nothing (the existing leave stands, as in Synapse).
    await ok(bob, "POST", f"/rooms/{q(room)}/leave", {})
    assert (await member(alice, room, bob.user_id))["event_id"] == ev["event_id"]
    assert_forbidden(*await bob.request("PUT", f"/rooms/{q(room)}/send/m.room.message/t1", {"body": "hi"}))


async def test_sync_shows_knock(server: TestHomeServer) -> None:
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await knock_room(alice, name="Knock Knock", topic="who is there")
    await alice.send_message(room, "secret")
    admin_since = (await alice.sync())["next_batch"]
    bob_since = (await bob.sync())["next_batch"]
    assert (await knock(bob, room, {"reason": "hello"}))[0] == 200

    for res in (await bob.sync(bob_since), await bob.sync()):
        assert room not in res["rooms"]["join"] and room not in res["rooms"]["invite"]
        events = res["rooms"]["knock"][room]["knock_state"]["events"]
        by_key = {(e["type"], e["state_key"]): e for e in events}
        assert by_key[("m.room.create", "")]["sender"] == alice.user_id
        assert by_key[("m.room.join_rules", "")]["content"] == {"join_rule": "knock"}
        assert by_key[("m.room.name", "")]["content"] == {"name": "Knock Knock"}
        assert ("m.room.topic", "") in by_key
        for key in (("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", "")):
            assert set(by_key[key]) == {"type", "state_key", "sender", "content"}, key
        knock_ev = by_key[("m.room.member", bob.user_id)]
        assert knock_ev["content"]["membership"] == "knock" and knock_ev["content"]["reason"] == "hello"
        assert knock_ev["sender"] == bob.user_id
        # Neither the room's messages nor other members leak into stripped state.
        assert not any(e["type"] == "m.room.message" for e in events)
        assert ("m.room.member", alice.user_id) not in by_key

    res = await alice.sync(admin_since)
    timeline = res["rooms"]["join"][room]["timeline"]["events"]
    knocks = [e for e in timeline if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert len(knocks) == 1
    assert knocks[0]["content"]["membership"] == "knock" and knocks[0]["sender"] == bob.user_id
    # An incremental sync with nothing new for bob keeps the knock out.
    nb = (await bob.sync())["next_batch"]
    assert room not in (await bob.sync(nb))["rooms"]["knock"]


async def test_knock_rate_limited_like_joins(make_server: Any) -> None:
    server = await make_server("sqlite", rc_joins={"local": {"per_second": 0.001, "burst_count": 1}})
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room_a = await knock_room(alice)
    room_b = await knock_room(alice)
    assert (await knock(bob, room_a))[0] == 200
    status, body = await knock(bob, room_b)
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    members = await ok(alice, "GET", f"/rooms/{q(room_b)}/members", membership="knock")
    assert members["chunk"] == []
    # Repeating a knock already in place is not another knock.
    assert (await knock(bob, room_a))[0] == 200


def test_knock_route_is_served_like_join() -> None:
    routes = {(r.method, r.path): r for r in all_routes()}
    knock_route = routes[("POST", "/knock/{roomIdOrAlias}")]
    join_route = routes[("POST", "/join/{roomIdOrAlias}")]
    assert knock_route.group == join_route.group
    assert "/_matrix/client/v3/knock/{roomIdOrAlias}" in knock_route.full_paths()
    # In the example cluster the generic workers serve it, exactly as they serve /join.
    cluster = load_config(Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml")
    targets = {(route.method, route.path): addrs for route, _, addrs in route_targets(cluster)}
    knock_targets = targets[("POST", "/knock/{roomIdOrAlias}")]
    assert knock_targets == targets[("POST", "/join/{roomIdOrAlias}")]
    main = [listener.port for listener in cluster.listeners_for("main")]
    assert all(addr[0] != "main" or addr[1] not in main for addr in knock_targets)
