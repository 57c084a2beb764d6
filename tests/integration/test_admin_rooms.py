"""Synapse's room admin API over real HTTP, both engines: listing rooms (orders, directions, search,
pages), a room's details, members and state, blocking, deleting a room (members removed, aliases gone,
purged, blocked), make_room_admin, and purging history (current state and latest event kept); admins
only."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest

from hs.services.admin_rooms import check_not_blocked
from tests.harness import Client, TestHomeServer, admin, ok, user

V1 = "/_synapse/admin/v1"
V2 = "/_synapse/admin/v2"
LIST_FIELDS = {"room_id", "name", "canonical_alias", "joined_members", "joined_local_members", "version",
               "creator", "encryption", "federatable", "public", "join_rules", "guest_access",
               "history_visibility", "state_events", "room_type"}


@pytest.fixture
async def server(make_server: Any, engine: str) -> TestHomeServer:
    srv: TestHomeServer = await make_server(engine)
    return srv


async def wait_status(client: Client, path: str, done: tuple[str, ...] = ("complete", "failed")) -> Any:
    for _ in range(200):
        body = await ok(client, "GET", path)
        status = body["results"][0]["status"] if "results" in body else body["status"]
        if status in done:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} did not finish")


async def test_list_and_details(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    apples = await alice.create_room(name="Apples", preset="public_chat", room_alias_name="apples",
                                     visibility="public")
    await ok(bob, "POST", f"/join/{apples}", {})
    pears = await alice.create_room(name="pears", initial_state=[
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    unnamed = await bob.create_room()

    status, body = await bob.request("GET", V1 + "/rooms")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"

    page = await ok(boss, "GET", V1 + "/rooms")
    assert (page["offset"], page["total_rooms"]) == (0, 3) and "next_batch" not in page
    assert "prev_batch" not in page
    assert all(set(r) == LIST_FIELDS for r in page["rooms"])
    # By name, going up: Synapse sorts the bytes ("Apples" < "pears"), rooms without a name last.
    assert [r["room_id"] for r in page["rooms"]] == [apples, pears, unnamed]
    first = page["rooms"][0]
    assert first == {
        "room_id": apples, "name": "Apples", "canonical_alias": "#apples:test.local", "joined_members": 2,
        "joined_local_members": 2, "version": first["version"], "creator": alice.user_id, "encryption": None,
        "federatable": True, "public": True, "join_rules": "public", "guest_access": first["guest_access"],
        "history_visibility": "shared", "state_events": first["state_events"], "room_type": None,
    }
    assert page["rooms"][1]["encryption"] == "m.megolm.v1.aes-sha2"
    assert page["rooms"][1]["join_rules"] == "invite" and page["rooms"][1]["public"] is False

    back = await ok(boss, "GET", V1 + "/rooms", dir="b")
    assert [r["room_id"] for r in back["rooms"]] == [unnamed, pears, apples]
    by_size = await ok(boss, "GET", V1 + "/rooms", order_by="joined_members")
    assert by_size["rooms"][0]["room_id"] == apples
    by_state = await ok(boss, "GET", V1 + "/rooms", order_by="state_events", dir="b")
    assert by_state["rooms"][-1]["state_events"] >= by_state["rooms"][0]["state_events"]

    paged = await ok(boss, "GET", V1 + "/rooms", limit="1", **{"from": "1"})
    assert [r["room_id"] for r in paged["rooms"]] == [pears]
    assert (paged["next_batch"], paged["prev_batch"], paged["offset"]) == (2, 0, 1)

    for term, expect in (("APP", [apples]), ("pea", [pears]), ("apples:", [apples]), (unnamed, [unnamed]),
                         ("zzz", [])):
        found = await ok(boss, "GET", V1 + "/rooms", search_term=term)
        assert [r["room_id"] for r in found["rooms"]] == expect, term
        assert found["total_rooms"] == len(expect)
    public = await ok(boss, "GET", V1 + "/rooms", public_rooms="true")
    assert [r["room_id"] for r in public["rooms"]] == [apples]

    for params in ({"order_by": "size_of_shoe"}, {"dir": "x"}, {"search_term": ""}, {"limit": "-1"}):
        status, body = await boss.request("GET", V1 + "/rooms", params=params)
        assert status == 400, (params, body)

    details = await ok(boss, "GET", V1 + f"/rooms/{apples}")
    assert LIST_FIELDS <= set(details)
    assert {"avatar", "topic", "joined_local_devices", "forgotten"} <= set(details)
    assert details["joined_local_devices"] == 2 and details["forgotten"] is False
    members = await ok(boss, "GET", V1 + f"/rooms/{apples}/members")
    assert members == {"members": sorted([alice.user_id, bob.user_id]), "total": 2}
    state = (await ok(boss, "GET", V1 + f"/rooms/{apples}/state"))["state"]
    assert {e["type"] for e in state} >= {"m.room.create", "m.room.member", "m.room.name", "m.room.power_levels"}
    assert len(state) == details["state_events"]

    missing = "!missing:test.local"
    for path in (f"/rooms/{missing}", f"/rooms/{missing}/members", f"/rooms/{missing}/state"):
        status, body = await boss.request("GET", V1 + path)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", path
    status, body = await boss.request("GET", V1 + "/rooms/not-a-room")
    assert status == 400


async def test_block(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    room = await alice.create_room()
    assert await ok(boss, "GET", V1 + f"/rooms/{room}/block") == {"block": False}
    assert await ok(boss, "PUT", V1 + f"/rooms/{room}/block", {"block": True}) == {"block": True}
    assert await ok(boss, "GET", V1 + f"/rooms/{room}/block") == {"block": True, "user_id": boss.user_id}
    # A room not known here can be blocked too.
    assert await ok(boss, "PUT", V1 + "/rooms/!elsewhere:remote.test/block", {"block": True}) == {"block": True}
    # Joins, invites and knocks into a blocked room are refused; leaving is not.
    bob = await user(server, "bob")
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.join_rules", {"join_rule": "public"})
    for who, method, path, body in ((bob, "POST", f"/join/{room}", {}),
                                    (alice, "POST", f"/rooms/{room}/invite", {"user_id": bob.user_id}),
                                    (bob, "POST", f"/knock/{room}", {})):
        status, answer = await who.request(method, path, body)
        assert (status, answer.get("error")) == (403, "This room has been blocked on this server"), path
    await ok(alice, "POST", f"/rooms/{room}/leave", {})
    assert await ok(boss, "PUT", V1 + f"/rooms/{room}/block", {"block": False}) == {"block": False}
    await check_not_blocked(server.hs, room)
    await ok(bob, "POST", f"/join/{room}", {})
    assert await ok(boss, "GET", V1 + f"/rooms/{room}/block") == {"block": False}
    for body in ({}, {"block": "yes"}):
        status, answer = await boss.request("PUT", V1 + f"/rooms/{room}/block", body)
        assert status == 400, answer
    status, answer = await alice.request("PUT", V1 + f"/rooms/{room}/block", {"block": True})
    assert status == 403 and answer["errcode"] == "M_FORBIDDEN"


async def test_delete_room(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    room = await alice.create_room(room_alias_name="doomed", preset="public_chat")
    await ok(bob, "POST", f"/join/{room}", {})
    await alice.send_message(room, "bye")

    status, body = await alice.request("DELETE", V2 + f"/rooms/{room}", {})
    assert status == 403
    delete_id = (await ok(boss, "DELETE", V2 + f"/rooms/{room}", {"block": True, "purge": True}))["delete_id"]
    status_body = await wait_status(boss, V2 + f"/rooms/{room}/delete_status")
    (result,) = status_body["results"]
    assert result["delete_id"] == delete_id and result["status"] == "complete", result
    shutdown = result["shutdown_room"]
    assert sorted(shutdown["kicked_users"]) == sorted([alice.user_id, bob.user_id])
    # Without a new room, aliases are not moved (the purge removes them), as in Synapse.
    assert shutdown["failed_to_kick_users"] == [] and shutdown["local_aliases"] == []
    assert shutdown["new_room_id"] is None
    by_id = await ok(boss, "GET", V2 + f"/rooms/delete_status/{delete_id}")
    assert by_id["status"] == "complete" and by_id["shutdown_room"] == shutdown

    assert room not in (await ok(alice, "GET", "/joined_rooms"))["joined_rooms"]
    status, _ = await boss.request("GET", V1 + f"/rooms/{room}")
    assert status == 404
    assert await server.hs.db.fetchval("SELECT COUNT(*) FROM events WHERE room_id = $1", room) == 0
    status, _ = await alice.request("GET", f"/directory/room/{quote('#doomed:test.local')}")
    assert status == 404
    assert await ok(boss, "GET", V1 + f"/rooms/{room}/block") == {"block": True, "user_id": boss.user_id}

    status, body = await boss.request("GET", V2 + "/rooms/delete_status/nope")
    assert status == 404
    status, body = await boss.request("GET", V2 + "/rooms/!other:test.local/delete_status")
    assert status == 404
    status, body = await boss.request("DELETE", V2 + "/rooms/!unknown:test.local", {})
    assert status == 404
    status, body = await boss.request("DELETE", V2 + f"/rooms/{room}", {"new_room_user_id": "@x:elsewhere.test"})
    assert status == 400
    status, body = await boss.request("DELETE", V2 + f"/rooms/{room}", {"purge": False, "force_purge": True})
    assert status == 400


async def test_delete_without_purge(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    room = await alice.create_room()
    # v1 answers when done, with the shutdown's result.
    result = await ok(boss, "DELETE", V1 + f"/rooms/{room}", {"purge": False})
    assert result == {"kicked_users": [alice.user_id], "failed_to_kick_users": [], "local_aliases": [],
                      "new_room_id": None}
    body = await wait_status(boss, V2 + f"/rooms/{room}/delete_status")
    assert body["results"][0]["status"] == "complete"
    details = await ok(boss, "GET", V1 + f"/rooms/{room}")
    assert details["joined_members"] == 0 and details["forgotten"] is True
    assert await ok(boss, "GET", V1 + f"/rooms/{room}/block") == {"block": False}


async def test_make_room_admin(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    private = await alice.create_room(preset="private_chat")
    public = await alice.create_room(preset="public_chat", room_alias_name="pub")

    assert await ok(boss, "POST", V1 + f"/rooms/{private}/make_room_admin", {}) == {}
    assert private in (await ok(boss, "GET", "/joined_rooms"))["joined_rooms"]
    levels = await ok(boss, "GET", f"/rooms/{private}/state/m.room.power_levels")
    assert levels["users"][boss.user_id] == 100

    alias = quote("#pub:test.local")
    assert await ok(boss, "POST", V1 + f"/rooms/{alias}/make_room_admin", {"user_id": bob.user_id}) == {}
    levels = await ok(bob, "GET", f"/rooms/{public}/state/m.room.power_levels")
    assert levels["users"][bob.user_id] == 100

    status, body = await alice.request("POST", V1 + f"/rooms/{private}/make_room_admin", {})
    assert status == 403
    status, body = await boss.request("POST", V1 + f"/rooms/{private}/make_room_admin",
                                      {"user_id": "@x:elsewhere.test"})
    assert status == 400


async def test_purge_history(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    room = await alice.create_room(name="history")
    old = [await alice.send_message(room, f"old {i}") for i in range(3)]
    cut = await alice.send_message(room, "cut")
    await alice.send_message(room, "new")

    status, body = await alice.request("POST", V1 + f"/purge_history/{room}", {"purge_up_to_event_id": cut})
    assert status == 403
    # Local events stay unless delete_local_events.
    purge_id = (await ok(boss, "POST", V1 + f"/purge_history/{room}", {"purge_up_to_event_id": cut}))["purge_id"]
    assert (await wait_status(boss, V1 + f"/purge_history_status/{purge_id}"))["status"] == "complete"
    assert (await ok(alice, "GET", f"/rooms/{room}/event/{old[0]}"))["event_id"] == old[0]

    purge_id = (await ok(boss, "POST", V1 + f"/purge_history/{room}",
                         {"purge_up_to_event_id": cut, "delete_local_events": True}))["purge_id"]
    assert (await wait_status(boss, V1 + f"/purge_history_status/{purge_id}"))["status"] == "complete"
    for event_id in old:
        status, _ = await alice.request("GET", f"/rooms/{room}/event/{event_id}")
        assert status == 404
    messages = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", limit="50")
    bodies = [e["content"].get("body") for e in messages["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["new", "cut"]
    # The room's state is whole: its name, its members.
    assert (await ok(alice, "GET", f"/rooms/{room}/state/m.room.name"))["name"] == "history"
    assert await alice.send_message(room, "still works")

    # Up to a time: everything before it but the latest event.
    purge_id = (await ok(boss, "POST", V1 + f"/purge_history/{room}",
                         {"purge_up_to_ts": 2**62, "delete_local_events": True}))["purge_id"]
    assert (await wait_status(boss, V1 + f"/purge_history_status/{purge_id}"))["status"] == "complete"
    # ("new" may still be kept: it stays while the forward extremities, updated after a send, list it.)
    status, _ = await alice.request("GET", f"/rooms/{room}/event/{cut}")
    assert status == 404
    messages = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", limit="50")
    assert [e["content"].get("body") for e in messages["chunk"] if e["type"] == "m.room.message"][0] == "still works"
    assert "cut" not in [e["content"].get("body") for e in messages["chunk"]]

    for body in ({}, {"purge_up_to_event_id": "$missing"}, {"purge_up_to_ts": "soon"}):
        status, answer = await boss.request("POST", V1 + f"/purge_history/{room}", body)
        assert status in (400, 404), (body, answer)
    status, _ = await boss.request("POST", V1 + f"/purge_history/{room}", {"purge_up_to_ts": 1})
    assert status == 404
    status, _ = await boss.request("GET", V1 + "/purge_history_status/nope")
    assert status == 404


async def test_delete_room_moving_members(server: TestHomeServer) -> None:
    boss = await admin(server)
    alice = await user(server, "alice")
    bob = await user(server, "bob")
    carol = await user(server, "carol")
    room = await alice.create_room(room_alias_name="moved", preset="public_chat")
    await ok(bob, "POST", f"/join/{room}", {})
    await ok(alice, "POST", f"/rooms/{room}/invite", {"user_id": carol.user_id})
    delete_id = (await ok(boss, "DELETE", V2 + f"/rooms/{room}", {
        "new_room_user_id": boss.user_id, "room_name": "Moved", "message": "This room was closed"}))["delete_id"]
    status = await wait_status(boss, V2 + f"/rooms/delete_status/{delete_id}")
    assert status["status"] == "complete", status
    shutdown = status["shutdown_room"]
    new_room = shutdown["new_room_id"]
    assert isinstance(new_room, str) and new_room != room
    assert sorted(shutdown["kicked_users"]) == sorted([alice.user_id, bob.user_id, carol.user_id])
    assert shutdown["local_aliases"] == ["#moved:test.local"]
    # The joined members are in the new room, where the message says why; the invite was withdrawn.
    for client in (alice, bob):
        assert (await ok(client, "GET", "/joined_rooms"))["joined_rooms"] == [new_room]
    assert (await ok(carol, "GET", "/joined_rooms"))["joined_rooms"] == []
    assert (await ok(alice, "GET", f"/rooms/{new_room}/state/m.room.name"))["name"] == "Moved"
    messages = await ok(alice, "GET", f"/rooms/{new_room}/messages", dir="b", limit="20")
    assert "This room was closed" in [e["content"].get("body") for e in messages["chunk"]]
    assert (await ok(alice, "GET", f"/directory/room/{quote('#moved:test.local')}"))["room_id"] == new_room
    status_code, body = await alice.request("PUT", f"/rooms/{new_room}/send/m.room.message/t1",
                                            {"msgtype": "m.text", "body": "hi"})
    assert status_code == 403
