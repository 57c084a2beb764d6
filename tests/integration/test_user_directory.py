"""POST /user_directory/search: users the searcher can see through rooms (sharing one, or members of
public or world-readable rooms), matched by user ID and display name, ranked, limited."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user


async def search(client: Client, term: str, **extra: Any) -> dict[str, Any]:
    return await ok(client, "POST", "/user_directory/search", {"search_term": term, **extra})  # type: ignore[no-any-return]


def ids(result: dict[str, Any]) -> list[str]:
    return [r["user_id"] for r in result["results"]]


async def test_only_users_visible_through_rooms_are_found(server: Any) -> None:
    alice, bob, carol, dave = [await user(server, n) for n in ("alice", "bob", "carol", "dave")]
    private = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{private}")
    assert ids(await search(alice, "bob")) == [bob.user_id]  # shares a room
    assert ids(await search(carol, "bob")) == []  # shares none, and the room is private
    public = await dave.create_room(preset="public_chat")
    assert ids(await search(carol, "dave")) == [dave.user_id]  # joined to a public room
    # The room stops being public: its members are no longer found by outsiders.
    await ok(dave, "PUT", f"/rooms/{public}/state/m.room.join_rules", {"join_rule": "invite"})
    assert ids(await search(carol, "dave")) == []
    # World-readable history makes a room's members findable too.
    await ok(dave, "PUT", f"/rooms/{public}/state/m.room.history_visibility",
             {"history_visibility": "world_readable"})
    assert ids(await search(carol, "dave")) == [dave.user_id]
    # Users who left are not members any more.
    await ok(dave, "POST", f"/rooms/{public}/leave")
    assert ids(await search(carol, "dave")) == []


async def test_matching_by_user_id_and_display_name(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bobby")
    await ok(bob, "PUT", f"/profile/{bob.user_id}/displayname", {"displayname": "Robert Tables"})
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    found = await search(alice, "ROBERT")
    assert found == {"results": [{"user_id": bob.user_id, "display_name": "Robert Tables"}], "limited": False}
    assert ids(await search(alice, "tables robert")) == [bob.user_id]  # every word, any order
    assert ids(await search(alice, "bobby")) == [bob.user_id]  # the user ID
    assert ids(await search(alice, "robert smith")) == []  # a word that matches nothing
    # LIKE wildcards in the term are literal characters.
    assert ids(await search(alice, "%")) == [] and ids(await search(alice, "_")) == []
    assert (await search(alice, "   ")) == {"results": [], "limited": False}


async def test_ranking_and_limit(server: Any) -> None:
    owner = await user(server, "owner")
    room = await owner.create_room(preset="public_chat")
    members = [await user(server, name) for name in ("samuel", "sam", "xsamx", "samantha")]
    for m in members:
        await ok(m, "POST", f"/join/{room}")
    result = await search(owner, "sam")
    # The exact localpart first, then localparts starting with the term, then the rest.
    assert ids(result)[0] == members[1].user_id
    assert set(ids(result)[1:3]) == {members[0].user_id, members[3].user_id}
    assert ids(result)[3] == members[2].user_id
    assert result["limited"] is False
    limited = await search(owner, "sam", limit=2)
    assert len(limited["results"]) == 2 and limited["limited"] is True


async def test_deactivated_users_are_not_found(server: Any) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat")
    gone = server.client()
    await gone.register("zed", "zedpass12")
    await ok(gone, "POST", f"/join/{room}")
    assert ids(await search(alice, "zed")) == [gone.user_id]
    status, _ = await gone.request("POST", "/account/deactivate", {"auth": {
        "type": "m.login.password", "user": "zed", "password": "zedpass12"}})
    assert status == 200
    assert ids(await search(alice, "zed")) == []
    await gone.close()


async def test_bad_requests(server: Any) -> None:
    alice = await user(server, "alice")
    cases = [
        ({}, 400, "M_MISSING_PARAM"),
        ({"search_term": 5}, 400, "M_BAD_JSON"),
        ({"search_term": "a", "limit": "10"}, 400, "M_BAD_JSON"),
        ({"search_term": "a", "limit": -1}, 400, "M_BAD_JSON"),
        ({"search_term": "a" * 1000}, 400, "M_BAD_JSON"),
    ]
    for body, status, errcode in cases:
        got, data = await alice.request("POST", "/user_directory/search", body)
        assert (got, data["errcode"]) == (status, errcode), body
    anonymous = server.client()
    status, data = await anonymous.request("POST", "/user_directory/search", {"search_term": "a"})
    assert status == 401 and data["errcode"] == "M_MISSING_TOKEN"
    await anonymous.close()
