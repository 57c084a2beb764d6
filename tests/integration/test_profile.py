"""Profiles over real HTTP on both engines: reading, setting, validation, and propagation into rooms."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hs.db.stores.rooms import NewRoom
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.services.new_room import create_room
from tests.harness import Client, TestHomeServer


async def _register(srv: TestHomeServer, username: str) -> Client:
    client = srv.client()
    await client.register(username)
    return client


async def _make_room(srv: TestHomeServer, creator: str, *joiners: str) -> str:
    """A public room built directly through the event sender (independent of the rooms API)."""
    hs = srv.hs
    rv = KNOWN_ROOM_VERSIONS[hs.config.default_room_version]
    room_id = await create_room(hs, rv, creator, {"room_version": rv.identifier}, [], NewRoom(creator))
    profile = await hs.user_store.get_profile(creator) or {}
    await hs.event_sender.send(room_id, creator, "m.room.member",
                               {"membership": "join", "displayname": profile.get("displayname")},
                               state_key=creator)
    await hs.event_sender.send(room_id, creator, "m.room.power_levels", {"users": {}}, state_key="")
    await hs.event_sender.send(room_id, creator, "m.room.join_rules", {"join_rule": "public"}, state_key="")
    for user in joiners:
        await hs.event_sender.send(room_id, user, "m.room.member", {"membership": "join"}, state_key=user)
    return room_id


async def _member_content(srv: TestHomeServer, room_id: str, user_id: str) -> dict[str, object]:
    ev = await srv.hs.event_store.get_current_state_event(room_id, "m.room.member", user_id)
    assert ev is not None
    return dict(ev.content)


async def test_profile_get_and_set(server: TestHomeServer) -> None:
    c = await _register(server, "olive")
    uid = quote("@olive:test.local")

    # The display name defaults to the localpart; no avatar yet.
    status, body = await c.request("GET", f"/profile/{uid}", auth=False)
    assert status == 200 and body == {"displayname": "olive"}
    status, body = await c.request("GET", f"/profile/{uid}/avatar_url", auth=False)
    assert status == 200 and body == {"avatar_url": None}

    status, body = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": "Olive Oyl"})
    assert status == 200 and body == {}
    status, body = await c.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": "mxc://test.local/abc123"})
    assert status == 200 and body == {}

    status, body = await c.request("GET", f"/profile/{uid}/displayname", auth=False)
    assert status == 200 and body == {"displayname": "Olive Oyl"}
    status, body = await c.request("GET", f"/profile/{uid}/avatar_url", auth=False)
    assert status == 200 and body == {"avatar_url": "mxc://test.local/abc123"}
    status, body = await c.request("GET", f"/profile/{uid}", auth=False)
    assert status == 200 and body == {"displayname": "Olive Oyl", "avatar_url": "mxc://test.local/abc123"}
    # The v1 prefix serves profiles too.
    status, body = await c.request("GET", f"/_matrix/client/r0/profile/{uid}/displayname", auth=False)
    assert status == 200 and body == {"displayname": "Olive Oyl"}

    # Empty values clear a field.
    status, _ = await c.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": ""})
    assert status == 200
    status, body = await c.request("GET", f"/profile/{uid}", auth=False)
    assert body == {"displayname": "Olive Oyl"}
    status, _ = await c.request("DELETE", f"/profile/{uid}/displayname")
    assert status == 200
    status, body = await c.request("GET", f"/profile/{uid}", auth=False)
    assert body == {}
    await c.close()


async def test_profile_validation_and_permissions(server: TestHomeServer) -> None:
    c = await _register(server, "pete")
    other = await _register(server, "quinn")
    uid = quote("@pete:test.local")

    for value in ("x" * 257, 42, ["list"]):
        status, body = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": value})
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", value
    status, _ = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": "y" * 256})
    assert status == 200
    for value in (7, {"url": "mxc://a/b"}):  # any string is taken (as Synapse), other types are not
        status, body = await c.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": value})
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", value
    status, body = await c.request("PUT", f"/profile/{uid}/displayname", {})
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    status, body = await c.request("PUT", f"/profile/{uid}/displayname", raw=b"{nope")
    assert status == 400 and body["errcode"] == "M_NOT_JSON"

    # Only the user may change their own profile, and only when logged in.
    status, body = await other.request("PUT", f"/profile/{uid}/displayname", {"displayname": "hacked"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await other.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": "mxc://a/b"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": "z"}, auth=False)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await c.request("GET", f"/profile/{uid}/displayname", auth=False)
    assert body == {"displayname": "y" * 256}

    # Unknown users.
    for path in ("", "/displayname", "/avatar_url"):
        status, body = await c.request("GET", f"/profile/{quote('@ghost:test.local')}{path}", auth=False)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", path
    status, body = await c.request("GET", f"/profile/{quote('@pete:elsewhere.org')}", auth=False)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    await c.close()
    await other.close()


async def test_profile_requires_auth_when_configured(make_server: Any) -> None:
    srv = await make_server("sqlite", require_auth_for_profile_requests=True)
    c = await _register(srv, "rita")
    uid = quote("@rita:test.local")
    status, body = await c.request("GET", f"/profile/{uid}", auth=False)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    status, body = await c.request("GET", f"/profile/{uid}")
    assert status == 200 and body == {"displayname": "rita"}
    await c.close()


async def test_profile_propagates_to_joined_rooms(server: TestHomeServer) -> None:
    c = await _register(server, "sara")
    bob = await _register(server, "tom")
    sara, tom = "@sara:test.local", "@tom:test.local"
    room1 = await _make_room(server, sara, tom)
    room2 = await _make_room(server, tom, sara)
    room_left = await _make_room(server, tom, sara)
    await server.hs.event_sender.send(room_left, sara, "m.room.member", {"membership": "leave"}, state_key=sara)
    unrelated = await _make_room(server, tom)

    before = await _member_content(server, room1, sara)
    assert before == {"membership": "join", "displayname": "sara"}
    left_before = await server.hs.event_store.get_current_state_event(room_left, "m.room.member", sara)
    unrelated_before = await server.hs.event_store.get_forward_extremities(unrelated)

    uid = quote(sara)
    status, _ = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": "Sara S."})
    assert status == 200
    status, _ = await c.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": "mxc://test.local/pic"})
    assert status == 200

    for room in (room1, room2):
        content = await _member_content(server, room, sara)
        assert content == {"membership": "join", "displayname": "Sara S.", "avatar_url": "mxc://test.local/pic"}
        ev = await server.hs.event_store.get_current_state_event(room, "m.room.member", sara)
        assert ev is not None and ev.sender == sara and ev.state_key == sara
    # Other members' events are untouched.
    assert (await _member_content(server, room1, tom)).get("displayname") is None
    # Rooms the user left, or was never in, get no new event.
    left_after = await server.hs.event_store.get_current_state_event(room_left, "m.room.member", sara)
    assert left_before is not None and left_after is not None
    assert left_after.event_id == left_before.event_id and left_after.content == {"membership": "leave"}
    assert await server.hs.event_store.get_forward_extremities(unrelated) == unrelated_before

    # Clearing the avatar removes it from the member events, keeping the rest.
    status, _ = await c.request("PUT", f"/profile/{uid}/avatar_url", {"avatar_url": ""})
    assert status == 200
    content = await _member_content(server, room2, sara)
    assert content == {"membership": "join", "displayname": "Sara S."}

    # Setting an unchanged value sends nothing new.
    ext = await server.hs.event_store.get_forward_extremities(room1)
    status, _ = await c.request("PUT", f"/profile/{uid}/displayname", {"displayname": "Sara S."})
    assert status == 200
    assert await server.hs.event_store.get_forward_extremities(room1) == ext
    await c.close()
    await bob.close()
