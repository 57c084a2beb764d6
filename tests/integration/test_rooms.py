"""Room creation, membership, state, members, aliases and the room directory over real HTTP, on SQLite
and PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import Client, TestHomeServer


async def users(server: TestHomeServer, *names: str) -> list[Client]:
    out = []
    for name in names:
        c = server.client()
        await c.register(name)
        out.append(c)
    return out


async def close(*clients: Client) -> None:
    for c in clients:
        await c.close()


def q(s: str) -> str:
    return quote(s, safe="")


async def state_map(c: Client, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    status, events = await c.request("GET", f"/rooms/{q(room_id)}/state")
    assert status == 200, events
    return {(e["type"], e["state_key"]): e for e in events}


async def timeline(c: Client, room_id: str) -> list[dict[str, Any]]:
    """Every event of the room the user may see, oldest first."""
    status, data = await c.request("GET", f"/rooms/{q(room_id)}/messages", params={"dir": "f", "limit": "1000"})
    assert status == 200, data
    return list(data["chunk"])


async def membership(c: Client, room_id: str, user_id: str) -> dict[str, Any]:
    status, content = await c.request("GET", f"/rooms/{q(room_id)}/state/m.room.member/{q(user_id)}")
    assert status == 200, content
    return dict(content)


# -- creation ------------------------------------------------------------------------------------------

async def test_create_room_presets(server: TestHomeServer) -> None:
    (alice,) = await users(server, "alice")
    expected = {
        "private_chat": ("invite", "shared", "can_join", 0),
        "trusted_private_chat": ("invite", "shared", "can_join", 0),
        "public_chat": ("public", "shared", "forbidden", 50),
    }
    for preset, (join_rule, hv, guest, invite_level) in expected.items():
        room_id = await alice.create_room(preset=preset)
        state = await state_map(alice, room_id)
        assert state[("m.room.join_rules", "")]["content"] == {"join_rule": join_rule}, preset
        assert state[("m.room.history_visibility", "")]["content"] == {"history_visibility": hv}
        assert state[("m.room.guest_access", "")]["content"] == {"guest_access": guest}
        pl = state[("m.room.power_levels", "")]["content"]
        assert pl["invite"] == invite_level
        assert pl["events"]["m.room.power_levels"] == 100
        assert pl["state_default"] == 50 and pl["events_default"] == 0
        assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
        assert ("m.room.name", "") not in state
    # Without a preset, visibility picks it.
    public = await alice.create_room(visibility="public")
    assert (await state_map(alice, public))[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    private = await alice.create_room(visibility="private")
    assert (await state_map(alice, private))[("m.room.join_rules", "")]["content"]["join_rule"] == "invite"
    status, vis = await alice.request("GET", f"/directory/list/room/{q(public)}")
    assert (status, vis) == (200, {"visibility": "public"})
    status, vis = await alice.request("GET", f"/directory/list/room/{q(private)}")
    assert (status, vis) == (200, {"visibility": "private"})
    await close(alice)


async def test_create_room_with_every_option_in_spec_order(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(
        preset="public_chat", name="The Pub", topic="Happy hour", room_alias_name="pub",
        invite=[bob.user_id], is_direct=True,
        initial_state=[
            {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}},
            {"type": "org.example.custom", "state_key": "k", "content": {"a": 1}},
            {"type": "m.room.name", "content": {"name": "overridden by name"}},
        ],
        power_level_content_override={"events_default": 10, "users_default": 5},
        creation_content={"m.federate": False, "type": "org.example.room"},
    )
    state = await state_map(alice, room_id)
    alias = "#pub:test.local"
    assert state[("m.room.create", "")]["content"]["m.federate"] is False
    assert state[("m.room.create", "")]["content"]["type"] == "org.example.room"
    assert state[("m.room.name", "")]["content"] == {"name": "The Pub"}
    topic = state[("m.room.topic", "")]["content"]
    assert topic["topic"] == "Happy hour"
    assert topic["m.topic"]["m.text"] == [{"body": "Happy hour", "mimetype": "text/plain"}]
    assert state[("m.room.canonical_alias", "")]["content"] == {"alias": alias}
    assert state[("m.room.history_visibility", "")]["content"] == {"history_visibility": "joined"}
    assert state[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("org.example.custom", "k")]["content"] == {"a": 1}
    pl = state[("m.room.power_levels", "")]["content"]
    assert pl["events_default"] == 10 and pl["users_default"] == 5
    invite = state[("m.room.member", bob.user_id)]["content"]
    assert invite["membership"] == "invite" and invite["is_direct"] is True

    # Event order: create, creator join, power levels, alias, presets, initial_state, name, topic, invites.
    types = [(e["type"], e.get("state_key")) for e in await timeline(alice, room_id)]
    assert types == [
        ("m.room.create", ""), ("m.room.member", alice.user_id), ("m.room.power_levels", ""),
        ("m.room.canonical_alias", ""), ("m.room.join_rules", ""), ("m.room.guest_access", ""),
        ("m.room.encryption", ""), ("m.room.history_visibility", ""), ("org.example.custom", "k"),
        ("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", bob.user_id),
    ]
    status, resolved = await bob.request("GET", f"/directory/room/{q(alias)}")
    assert status == 200 and resolved["room_id"] == room_id and resolved["servers"] == ["test.local"]
    # visibility defaults to private even with the public_chat preset.
    status, vis = await alice.request("GET", f"/directory/list/room/{q(room_id)}")
    assert vis == {"visibility": "private"}
    await close(alice, bob)


async def test_room_versions_10_11_12(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    for version in ("10", "11", "12"):
        room_id = await alice.create_room(room_version=version, preset="trusted_private_chat",
                                          invite=[bob.user_id])
        events = await timeline(alice, room_id)
        create = events[0]
        assert create["type"] == "m.room.create"
        assert create["content"]["room_version"] == version
        pl = (await state_map(alice, room_id))[("m.room.power_levels", "")]["content"]
        if version == "12":
            assert room_id == "!" + create["event_id"][1:]
            assert ":" not in room_id
            assert "creator" not in create["content"]
            assert create["content"]["additional_creators"] == [bob.user_id]
            assert alice.user_id not in pl["users"] and bob.user_id not in pl["users"]
            assert pl["events"]["m.room.tombstone"] == 150
        else:
            assert room_id.endswith(":test.local")
            assert pl["users"] == {alice.user_id: 100, bob.user_id: 100}
            assert pl["events"]["m.room.tombstone"] == 100
            if version == "10":
                assert create["content"]["creator"] == alice.user_id
            else:
                assert "creator" not in create["content"]
        # The creator can do everything: change power levels, send state.
        status, body = await alice.request("PUT", f"/rooms/{q(room_id)}/state/m.room.power_levels",
                                           {**pl, "state_default": 60})
        assert status == 200, body
        # The invitee joins and, as a trusted invitee, may set the room name.
        status, body = await bob.request("POST", f"/rooms/{q(room_id)}/join", {})
        assert status == 200 and body == {"room_id": room_id}
        status, body = await bob.request("PUT", f"/rooms/{q(room_id)}/state/m.room.name", {"name": "by bob"})
        assert status == 200, body
    # The default room version comes from the config.
    room_id = await alice.create_room()
    assert (await timeline(alice, room_id))[0]["content"]["room_version"] == server.config.default_room_version
    await close(alice, bob)


# -- membership ----------------------------------------------------------------------------------------

async def test_invite_join_leave_reject_forget(server: TestHomeServer) -> None:
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await alice.create_room(preset="private_chat", name="private")
    rid = q(room_id)

    # Not invited: cannot join an invite-only room.
    status, err = await bob.request("POST", f"/rooms/{rid}/join", {})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, body = await alice.request("POST", f"/rooms/{rid}/invite",
                                       {"user_id": bob.user_id, "reason": "come in"})
    assert (status, body) == (200, {})
    invite = await membership(alice, room_id, bob.user_id)
    assert invite["membership"] == "invite" and invite["reason"] == "come in"
    assert invite["displayname"] == "bob"
    # Inviting again with the same content changes nothing.
    before = len(await timeline(alice, room_id))
    status, _ = await alice.request("POST", f"/rooms/{rid}/invite", {"user_id": bob.user_id, "reason": "come in"})
    assert status == 200 and len(await timeline(alice, room_id)) == before

    status, body = await bob.request("POST", f"/join/{rid}", {"reason": "hello"})
    assert (status, body) == (200, {"room_id": room_id})
    joined = await membership(bob, room_id, bob.user_id)
    assert joined["membership"] == "join" and joined["reason"] == "hello" and joined["displayname"] == "bob"
    status, data = await bob.request("GET", "/joined_rooms")
    assert status == 200 and data["joined_rooms"] == [room_id]
    # Joining twice is a no-op that still succeeds.
    before = len(await timeline(alice, room_id))
    status, body = await bob.request("POST", f"/rooms/{rid}/join", {"reason": "hello"})
    assert status == 200 and len(await timeline(alice, room_id)) == before

    # Forgetting needs leaving first.
    status, err = await bob.request("POST", f"/rooms/{rid}/forget", {})
    assert status == 400 and err["errcode"] == "M_UNKNOWN"
    status, _ = await bob.request("POST", f"/rooms/{rid}/leave", {"reason": "bye"})
    assert status == 200
    left = await membership(alice, room_id, bob.user_id)
    assert left == {"membership": "leave", "reason": "bye"}
    status, data = await bob.request("GET", "/joined_rooms")
    assert data["joined_rooms"] == []
    status, body = await bob.request("POST", f"/rooms/{rid}/forget", {})
    assert (status, body) == (200, {})
    assert await server.hs.event_store.is_forgotten(bob.user_id, room_id)

    # Rejecting an invite is leaving.
    status, _ = await alice.request("POST", f"/rooms/{rid}/invite", {"user_id": carol.user_id})
    assert status == 200
    status, _ = await carol.request("POST", f"/rooms/{rid}/leave")
    assert status == 200
    assert (await membership(alice, room_id, carol.user_id))["membership"] == "leave"
    # ...and then there is nothing to leave.
    status, err = await carol.request("POST", f"/rooms/{rid}/leave", {"reason": "again"})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    await close(alice, bob, carol)


async def test_kick_ban_unban_with_permissions(server: TestHomeServer) -> None:
    alice, bob, carol = await users(server, "alice", "bob", "carol")
    room_id = await alice.create_room(preset="public_chat", room_alias_name="kb")
    rid = q(room_id)
    for c in (bob, carol):
        status, body = await c.request("POST", f"/join/{q('#kb:test.local')}")
        assert (status, body) == (200, {"room_id": room_id})

    # Bob (power 0) may neither kick, ban nor invite (public_chat invite level is 50).
    status, err = await bob.request("POST", f"/rooms/{rid}/kick", {"user_id": carol.user_id})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, err = await bob.request("POST", f"/rooms/{rid}/ban", {"user_id": carol.user_id})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    assert (await membership(alice, room_id, carol.user_id))["membership"] == "join"

    status, _ = await alice.request("POST", f"/rooms/{rid}/kick", {"user_id": bob.user_id, "reason": "spam"})
    assert status == 200
    kicked = await membership(alice, room_id, bob.user_id)
    assert kicked == {"membership": "leave", "reason": "spam"}
    status, members = await alice.request("GET", f"/rooms/{rid}/joined_members")
    assert set(members["joined"]) == {alice.user_id, carol.user_id}

    # A kicked user may rejoin a public room; a banned one may not.
    status, _ = await bob.request("POST", f"/rooms/{rid}/join")
    assert status == 200
    status, _ = await alice.request("POST", f"/rooms/{rid}/ban", {"user_id": bob.user_id, "reason": "bad"})
    assert status == 200
    assert await membership(alice, room_id, bob.user_id) == {"membership": "ban", "reason": "bad"}
    status, err = await bob.request("POST", f"/rooms/{rid}/join")
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, err = await carol.request("POST", f"/rooms/{rid}/unban", {"user_id": bob.user_id})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    # Unbanning someone who is not banned is refused.
    status, err = await alice.request("POST", f"/rooms/{rid}/unban", {"user_id": carol.user_id})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, _ = await alice.request("POST", f"/rooms/{rid}/unban", {"user_id": bob.user_id, "reason": "ok"})
    assert status == 200
    assert await membership(alice, room_id, bob.user_id) == {"membership": "leave", "reason": "ok"}
    status, _ = await bob.request("POST", f"/rooms/{rid}/join")
    assert status == 200
    await close(alice, bob, carol)


async def test_joined_rooms_members_and_filters(server: TestHomeServer) -> None:
    alice, bob, carol, dave = await users(server, "alice", "bob", "carol", "dave")
    room_id = await alice.create_room(preset="public_chat")
    rid = q(room_id)
    status, _ = await bob.request("POST", f"/rooms/{rid}/join")
    assert status == 200
    # A token from before carol arrives.
    status, page = await alice.request("GET", f"/rooms/{rid}/messages", params={"dir": "b", "limit": "1"})
    before_carol = page["start"]
    await carol.request("POST", f"/rooms/{rid}/join")
    await alice.request("POST", f"/rooms/{rid}/invite", {"user_id": dave.user_id})
    await bob.request("POST", f"/rooms/{rid}/leave")

    status, data = await alice.request("GET", f"/rooms/{rid}/members")
    assert status == 200
    by_user = {e["state_key"]: e["content"]["membership"] for e in data["chunk"]}
    assert by_user == {alice.user_id: "join", bob.user_id: "leave", carol.user_id: "join", dave.user_id: "invite"}
    assert all(e["type"] == "m.room.member" and e["room_id"] == room_id for e in data["chunk"])

    async def members(**params: str) -> set[str]:
        status, data = await alice.request("GET", f"/rooms/{rid}/members", params=params)
        assert status == 200, data
        return {e["state_key"] for e in data["chunk"]}

    assert await members(membership="join") == {alice.user_id, carol.user_id}
    assert await members(membership="invite") == {dave.user_id}
    assert await members(not_membership="leave") == {alice.user_id, carol.user_id, dave.user_id}
    assert await members(membership="leave", not_membership="join") == {bob.user_id, dave.user_id}
    assert await members(at=before_carol) == {alice.user_id, bob.user_id}
    assert await members(at=before_carol, membership="join") == {alice.user_id, bob.user_id}

    status, data = await carol.request("GET", f"/rooms/{rid}/joined_members")
    assert status == 200
    assert data["joined"] == {alice.user_id: {"display_name": "alice"}, carol.user_id: {"display_name": "carol"}}
    # Bob left: the joined members are no longer his business, but the members list at his leave is.
    status, err = await bob.request("GET", f"/rooms/{rid}/joined_members")
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, data = await bob.request("GET", f"/rooms/{rid}/members")
    assert status == 200
    assert {e["state_key"] for e in data["chunk"]} == {alice.user_id, bob.user_id, carol.user_id, dave.user_id}
    for c, expected in ((alice, [room_id]), (bob, []), (dave, [])):
        status, data = await c.request("GET", "/joined_rooms")
        assert status == 200 and data["joined_rooms"] == expected
    await close(alice, bob, carol, dave)


# -- state -----------------------------------------------------------------------------------------------

async def test_state_get_and_put(server: TestHomeServer) -> None:
    alice, bob, eve = await users(server, "alice", "bob", "eve")
    room_id = await alice.create_room(preset="private_chat", name="Room")
    rid = q(room_id)
    await alice.request("POST", f"/rooms/{rid}/invite", {"user_id": bob.user_id})
    await bob.request("POST", f"/rooms/{rid}/join")

    status, body = await alice.request("PUT", f"/rooms/{rid}/state/m.room.topic", {"topic": "t1"})
    assert status == 200 and body["event_id"].startswith("$")
    topic_id = body["event_id"]
    # The trailing-slash form is the same (empty) state key.
    status, content = await bob.request("GET", f"/rooms/{rid}/state/m.room.topic/")
    assert (status, content) == (200, {"topic": "t1"})
    status, content = await bob.request("GET", f"/rooms/{rid}/state/m.room.topic")
    assert (status, content) == (200, {"topic": "t1"})
    status, ev = await bob.request("GET", f"/rooms/{rid}/state/m.room.topic", params={"format": "event"})
    assert status == 200
    assert ev["event_id"] == topic_id and ev["sender"] == alice.user_id and ev["content"] == {"topic": "t1"}
    assert ev["state_key"] == "" and ev["type"] == "m.room.topic" and ev["room_id"] == room_id

    # Re-sending identical state is deduplicated.
    status, again = await alice.request("PUT", f"/rooms/{rid}/state/m.room.topic/", {"topic": "t1"})
    assert status == 200 and again["event_id"] == topic_id
    status, changed = await alice.request("PUT", f"/rooms/{rid}/state/m.room.topic", {"topic": "t2"})
    assert changed["event_id"] != topic_id
    status, ev = await bob.request("GET", f"/rooms/{rid}/state/m.room.topic", params={"format": "event"})
    assert ev["content"] == {"topic": "t2"} and ev["unsigned"]["prev_content"] == {"topic": "t1"}

    # State keys with odd characters round-trip.
    key = "a/b c:@d"
    status, _ = await alice.request("PUT", f"/rooms/{rid}/state/org.example.thing/{q(key)}", {"v": 1})
    assert status == 200
    status, content = await bob.request("GET", f"/rooms/{rid}/state/org.example.thing/{q(key)}")
    assert (status, content) == (200, {"v": 1})
    assert ("org.example.thing", key) in await state_map(bob, room_id)

    # Bob (power 0) cannot set state that needs 50; the room is unchanged.
    status, err = await bob.request("PUT", f"/rooms/{rid}/state/m.room.name", {"name": "bob's"})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, content = await bob.request("GET", f"/rooms/{rid}/state/m.room.name")
    assert content == {"name": "Room"}
    # Unknown state: 404. Non-members: 403.
    status, err = await bob.request("GET", f"/rooms/{rid}/state/m.room.avatar")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    for path in (f"/rooms/{rid}/state", f"/rooms/{rid}/state/m.room.name", f"/rooms/{rid}/members"):
        status, err = await eve.request("GET", path)
        assert status == 403 and err["errcode"] == "M_FORBIDDEN", path

    # After leaving, bob sees the state as it was when he left.
    await bob.request("POST", f"/rooms/{rid}/leave")
    await alice.request("PUT", f"/rooms/{rid}/state/m.room.topic", {"topic": "after bob"})
    status, content = await bob.request("GET", f"/rooms/{rid}/state/m.room.topic")
    assert (status, content) == (200, {"topic": "t2"})
    state = await state_map(bob, room_id)
    assert state[("m.room.topic", "")]["content"] == {"topic": "t2"}
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "leave"

    # A world-readable room is readable by anyone.
    await alice.request("PUT", f"/rooms/{rid}/state/m.room.history_visibility",
                        {"history_visibility": "world_readable"})
    status, content = await eve.request("GET", f"/rooms/{rid}/state/m.room.topic")
    assert (status, content) == (200, {"topic": "after bob"})
    await close(alice, bob, eve)


async def test_member_state_put_goes_through_membership(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="private_chat")
    rid = q(room_id)
    status, body = await alice.request("PUT", f"/rooms/{rid}/state/m.room.member/{q(bob.user_id)}",
                                       {"membership": "invite"})
    assert status == 200, body
    assert (await membership(alice, room_id, bob.user_id))["membership"] == "invite"
    status, body = await bob.request("PUT", f"/rooms/{rid}/state/m.room.member/{q(bob.user_id)}",
                                     {"membership": "join", "displayname": "Bobby"})
    assert status == 200, body
    assert await membership(alice, room_id, bob.user_id) == {"membership": "join", "displayname": "Bobby"}
    await close(alice, bob)


# -- aliases and the directory ---------------------------------------------------------------------------

async def test_aliases(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    room_id = await alice.create_room(preset="public_chat")
    other = await bob.create_room(preset="public_chat")
    rid = q(room_id)
    alias = "#room:test.local"
    status, body = await alice.request("PUT", f"/directory/room/{q(alias)}", {"room_id": room_id})
    assert (status, body) == (200, {})
    status, body = await bob.request("GET", f"/directory/room/{q(alias)}")
    assert status == 200 and body == {"room_id": room_id, "servers": ["test.local"]}
    # Resolving needs no access token.
    status, body = await alice.request("GET", f"/directory/room/{q(alias)}", auth=False)
    assert status == 200 and body["room_id"] == room_id
    status, err = await bob.request("PUT", f"/directory/room/{q(alias)}", {"room_id": other})
    assert status == 409 and err["errcode"] == "M_ROOM_IN_USE"
    status, err = await alice.request("PUT", f"/directory/room/{q('#x:elsewhere.org')}", {"room_id": room_id})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    status, err = await alice.request("PUT", f"/directory/room/{q('notanalias')}", {"room_id": room_id})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    status, err = await alice.request("PUT", f"/directory/room/{q('#y:test.local')}", {"room_id": "!nope:test.local"})
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    status, body = await alice.request("PUT", f"/directory/room/{q('#second:test.local')}", {"room_id": room_id})
    assert status == 200

    status, body = await alice.request("GET", f"/rooms/{rid}/aliases")
    assert status == 200 and body == {"aliases": ["#room:test.local", "#second:test.local"]}
    status, err = await bob.request("GET", f"/rooms/{rid}/aliases")
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"

    # Canonical alias must point at the room.
    status, err = await alice.request("PUT", f"/rooms/{rid}/state/m.room.canonical_alias",
                                      {"alias": "#missing:test.local"})
    assert status == 400 and err["errcode"] == "M_BAD_ALIAS"
    status, body = await alice.request("PUT", f"/rooms/{rid}/state/m.room.canonical_alias",
                                       {"alias": alias, "alt_aliases": ["#second:test.local"]})
    assert status == 200, body

    # Bob joined but has no power: he cannot delete alice's alias; alice can, and the canonical alias
    # event loses it.
    await bob.request("POST", f"/rooms/{rid}/join")
    status, err = await bob.request("DELETE", f"/directory/room/{q(alias)}")
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, body = await alice.request("DELETE", f"/directory/room/{q(alias)}")
    assert (status, body) == (200, {})
    status, err = await bob.request("GET", f"/directory/room/{q(alias)}")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    status, err = await alice.request("DELETE", f"/directory/room/{q(alias)}")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    status, content = await alice.request("GET", f"/rooms/{rid}/state/m.room.canonical_alias")
    assert content == {"alt_aliases": ["#second:test.local"]}
    # Bob created his own alias, so he may delete it even without power.
    status, _ = await bob.request("PUT", f"/directory/room/{q('#bobs:test.local')}", {"room_id": room_id})
    assert status == 200
    status, _ = await bob.request("DELETE", f"/directory/room/{q('#bobs:test.local')}")
    assert status == 200

    # Room alias names taken at creation.
    status, err = await alice.request("POST", "/createRoom", {"room_alias_name": "second"})
    assert status == 400 and err["errcode"] == "M_ROOM_IN_USE"
    await close(alice, bob)


async def test_directory_visibility_and_public_rooms(server: TestHomeServer) -> None:
    alice, bob = await users(server, "alice", "bob")
    rooms = {}
    for i, (name, topic) in enumerate([("Cooking", "recipes and food"), ("Chess", "openings"),
                                       ("Gardening", "Tomatoes"), ("Secret", "not listed")]):
        rooms[name] = await alice.create_room(preset="public_chat", name=name, topic=topic,
                                              room_alias_name=f"r{i}",
                                              visibility="private" if name == "Secret" else "public")
    await bob.request("POST", f"/rooms/{q(rooms['Chess'])}/join")

    status, data = await bob.request("GET", "/publicRooms")
    assert status == 200
    assert [r["name"] for r in data["chunk"]][0] == "Chess"  # most members first
    assert {r["name"] for r in data["chunk"]} == {"Cooking", "Chess", "Gardening"}
    assert data["total_room_count_estimate"] == 3
    chess = next(r for r in data["chunk"] if r["name"] == "Chess")
    assert chess == {"room_id": rooms["Chess"], "name": "Chess", "topic": "openings", "canonical_alias": "#r1:test.local",
                     "num_joined_members": 2, "world_readable": False, "guest_can_join": False,
                     "join_rule": "public"}
    # The local directory needs no access token (the spec asks none); another server's would.
    status, anonymous = await bob.request("GET", "/publicRooms", auth=False)
    assert status == 200 and anonymous["chunk"] == data["chunk"]
    status, err = await bob.request("GET", "/publicRooms", params={"server": "other.example"}, auth=False)
    assert status == 401 and err["errcode"] == "M_MISSING_TOKEN"

    # Paging with limit and since tokens covers every room exactly once.
    seen: list[str] = []
    since = None
    while True:
        params = {"limit": "2", **({"since": since} if since else {})}
        status, page = await bob.request("GET", "/publicRooms", params=params)
        assert status == 200 and len(page["chunk"]) <= 2
        seen += [r["room_id"] for r in page["chunk"]]
        since = page.get("next_batch")
        if since is None:
            break
        assert page["chunk"]
    assert sorted(seen) == sorted([rooms["Cooking"], rooms["Chess"], rooms["Gardening"]])
    status, page = await bob.request("POST", "/publicRooms", {"limit": 1, "since": "n1"})
    assert status == 200 and len(page["chunk"]) == 1 and page["prev_batch"] == "p0"

    async def search(term: str) -> set[str]:
        status, data = await bob.request("POST", "/publicRooms", {"filter": {"generic_search_term": term}})
        assert status == 200, data
        return {r["name"] for r in data["chunk"]}

    assert await search("tomato") == {"Gardening"}  # topic, case-insensitive
    assert await search("CHE") == {"Chess"}  # name
    assert await search("#r0:") == {"Cooking"}  # canonical alias
    assert await search("nothing matches") == set()
    assert await search("listed") == set()  # not published

    # Publishing needs power in the room.
    status, err = await bob.request("PUT", f"/directory/list/room/{q(rooms['Chess'])}", {"visibility": "private"})
    assert status == 403 and err["errcode"] == "M_FORBIDDEN"
    status, _ = await alice.request("PUT", f"/directory/list/room/{q(rooms['Secret'])}", {"visibility": "public"})
    assert status == 200
    status, vis = await bob.request("GET", f"/directory/list/room/{q(rooms['Secret'])}", auth=False)
    assert (status, vis) == (200, {"visibility": "public"})
    assert await search("listed") == {"Secret"}
    status, _ = await alice.request("PUT", f"/directory/list/room/{q(rooms['Cooking'])}", {"visibility": "private"})
    assert status == 200
    assert await search("food") == set()
    status, err = await alice.request("PUT", f"/directory/list/room/{q(rooms['Chess'])}", {"visibility": "hidden"})
    assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
    status, err = await alice.request("GET", f"/directory/list/room/{q('!unknown:test.local')}")
    assert status == 404 and err["errcode"] == "M_NOT_FOUND"
    await close(alice, bob)


async def test_public_rooms_without_auth_when_allowed(make_server: Any) -> None:
    server = await make_server("sqlite", allow_public_rooms_without_auth=True)
    (alice,) = await users(server, "alice")
    room_id = await alice.create_room(visibility="public", name="Open")
    status, data = await alice.request("GET", "/publicRooms", auth=False)
    assert status == 200 and [r["room_id"] for r in data["chunk"]] == [room_id]
    await close(alice)
