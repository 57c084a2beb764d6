"""GET /_matrix/client/v1/rooms/{roomId}/hierarchy: a space tree, depth first, in the spec's child
order, with only the rooms the requester may see, suggested_only, max_depth and pagination."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user

HIERARCHY = "/_matrix/client/v1/rooms/{}/hierarchy"


async def add_child(owner: Client, space: str, child: str, **content: Any) -> None:
    await ok(owner, "PUT", f"/rooms/{space}/state/m.space.child/{child}", {"via": ["test.local"], **content})


async def names(client: Client, space: str, **params: str) -> list[str]:
    body = await ok(client, "GET", HIERARCHY.format(space), **params)
    return [r.get("name", r["room_id"]) for r in body["rooms"]]


async def test_a_space_tree_as_the_requester_may_see_it(server: Any) -> None:
    owner, bob = await user(server, "owner"), await user(server, "bob")
    space = await owner.create_room(preset="public_chat", name="Space", creation_content={"type": "m.space"})
    public = await owner.create_room(preset="public_chat", name="Public")
    secret = await owner.create_room(preset="private_chat", name="Secret")
    invited = await owner.create_room(preset="private_chat", name="Invited", invite=[bob.user_id])
    sub = await owner.create_room(preset="public_chat", name="Subspace", creation_content={"type": "m.space"})
    deep = await owner.create_room(preset="public_chat", name="Deep")
    # Children with an `order` come first (by code point); the rest by the child event's time.
    await add_child(owner, space, public)
    await add_child(owner, space, secret)
    await add_child(owner, space, invited, suggested=True)
    await add_child(owner, space, sub, order="a")
    await add_child(owner, sub, deep)
    await add_child(owner, sub, space)  # a loop: the space is shown once
    await ok(owner, "PUT", f"/rooms/{space}/state/m.space.child/!gone:test.local", {})  # no via: removed

    body = await ok(bob, "GET", HIERARCHY.format(space))
    assert [r["name"] for r in body["rooms"]] == ["Space", "Subspace", "Deep", "Public", "Invited"]
    root = body["rooms"][0]
    assert root["room_type"] == "m.space" and root["join_rule"] == "public" and root["num_joined_members"] == 1
    children = root["children_state"]
    assert [c["state_key"] for c in children] == [sub, public, secret, invited]  # all the space's children
    assert all(c["type"] == "m.space.child" and isinstance(c["origin_server_ts"], int) for c in children)
    assert children[0]["content"] == {"via": ["test.local"], "order": "a"}
    assert "next_batch" not in body

    assert await names(bob, space, suggested_only="true") == ["Space", "Invited"]
    assert await names(bob, space, max_depth="0") == ["Space"]
    assert await names(bob, space, max_depth="1") == ["Space", "Subspace", "Public", "Invited"]
    assert await names(owner, space) == ["Space", "Subspace", "Deep", "Public", "Secret", "Invited"]


async def test_pagination_and_errors(server: Any) -> None:
    owner, bob, eve = await user(server, "owner"), await user(server, "bob"), await user(server, "eve")
    space = await owner.create_room(preset="public_chat", name="Space", creation_content={"type": "m.space"})
    for i in range(4):
        room = await owner.create_room(preset="public_chat", name=f"Room {i}")
        await add_child(owner, space, room)
    first = await ok(bob, "GET", HIERARCHY.format(space), limit="2")
    assert [r["name"] for r in first["rooms"]] == ["Space", "Room 0"]
    second = await ok(bob, "GET", HIERARCHY.format(space), limit="2", **{"from": first["next_batch"]})
    assert [r["name"] for r in second["rooms"]] == ["Room 1", "Room 2"]
    third = await ok(bob, "GET", HIERARCHY.format(space), limit="2", **{"from": second["next_batch"]})
    assert [r["name"] for r in third["rooms"]] == ["Room 3"] and "next_batch" not in third

    status, body = await bob.request("GET", HIERARCHY.format(space),
                                     params={"from": first["next_batch"], "max_depth": "1"})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    for params in ({"from": "nonsense"}, {"limit": "0"}, {"max_depth": "-1"}, {"suggested_only": "maybe"}):
        status, body = await bob.request("GET", HIERARCHY.format(space), params=params)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", params
    private = await owner.create_room(preset="private_chat", creation_content={"type": "m.space"})
    for room in (private, "!unknown:test.local"):
        status, body = await eve.request("GET", HIERARCHY.format(room))
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", room


async def test_room_summary(server: Any) -> None:
    alice, eve = await user(server, "alice"), await user(server, "eve")
    status, created = await alice.request("POST", "/createRoom", {
        "preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby"})
    assert status == 200
    public = created["room_id"]
    summary = await ok(alice, "GET", f"/_matrix/client/v1/room_summary/{public}")
    assert summary["room_id"] == public and summary["name"] == "Lobby" and summary["join_rule"] == "public"
    assert summary["membership"] == "join" and summary["room_version"] == "12"
    assert summary["canonical_alias"] == "#lobby:test.local" and summary["num_joined_members"] == 1
    by_alias = await ok(eve, "GET", "/_matrix/client/v1/room_summary/%23lobby:test.local")
    assert by_alias["room_id"] == public and "membership" not in by_alias
    anonymous = server.client()
    status, body = await anonymous.request("GET", f"/_matrix/client/v1/room_summary/{public}")
    assert status == 200 and body["room_id"] == public and "membership" not in body
    private = await alice.create_room(preset="private_chat")
    for client in (eve, anonymous):
        status, body = await client.request("GET", f"/_matrix/client/v1/room_summary/{private}")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await eve.request("GET", "/_matrix/client/v1/room_summary/%23nowhere:test.local")
    assert status == 404
    await anonymous.close()


async def test_mutual_rooms(server: Any) -> None:
    alice, bob, carol = await user(server, "alice"), await user(server, "bob"), await user(server, "carol")
    shared = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{shared}")
    await alice.create_room(preset="public_chat")  # alice alone
    other = await carol.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{other}")
    assert await ok(alice, "GET", "/_matrix/client/v1/mutual_rooms", user_id=bob.user_id) == {
        "joined": [shared], "count": 1}
    assert await ok(alice, "GET", "/_matrix/client/v1/mutual_rooms", user_id="@nobody:test.local") == {
        "joined": [], "count": 0}
    for params in ({}, {"user_id": alice.user_id}, {"user_id": "bob"}, {"user_id": bob.user_id, "from": "x"}):
        status, body = await alice.request("GET", "/_matrix/client/v1/mutual_rooms", params=params)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", params
