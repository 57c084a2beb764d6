"""POST /rooms/{roomId}/upgrade: the replacement room keeps the state, aliases and listing; the old
room gets a tombstone and is locked for ordinary members."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user


async def state_of(client: Client, room: str) -> dict[tuple[str, str], dict[str, Any]]:
    events = await ok(client, "GET", f"/rooms/{room}/state")
    return {(e["type"], e["state_key"]): e for e in events}


async def test_upgrade_carries_the_room_over(server: Any) -> None:
    alice, bob, spammer = await user(server, "alice"), await user(server, "bob"), await user(server, "spam")
    carl = await user(server, "carl")
    status, created = await alice.request("POST", "/createRoom", {
        "preset": "public_chat", "room_version": "10", "name": "Old", "topic": "About things",
        "room_alias_name": "things", "visibility": "public"})
    assert status == 200
    old = created["room_id"]
    await ok(bob, "POST", f"/join/{old}")
    await ok(spammer, "POST", f"/join/{old}")
    await ok(carl, "POST", f"/join/{old}")
    await ok(alice, "POST", f"/rooms/{old}/ban", {"user_id": spammer.user_id})
    await ok(alice, "PUT", f"/rooms/{old}/state/m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    await ok(alice, "PUT", f"/rooms/{old}/state/m.room.power_levels", {
        **(await state_of(alice, old))[("m.room.power_levels", "")]["content"],
        "users": {alice.user_id: 100, bob.user_id: 50}})

    status, body = await bob.request("POST", f"/rooms/{old}/upgrade", {"new_version": "12"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"  # 50 < the tombstone's 100
    new = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))["replacement_room"]
    assert new != old

    state = await state_of(alice, new)
    create = state[("m.room.create", "")]["content"]
    assert create["room_version"] == "12" and create["predecessor"] == {"room_id": old}
    assert state[("m.room.name", "")]["content"]["name"] == "Old"
    assert state[("m.room.topic", "")]["content"]["topic"] == "About things"
    assert state[("m.room.join_rules", "")]["content"]["join_rule"] == "public"
    assert state[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.member", spammer.user_id)]["content"]["membership"] == "ban"
    assert state[("m.room.canonical_alias", "")]["content"]["alias"] == "#things:test.local"
    # v12: the upgrader is the creator, outranking power levels, so not listed in them.
    assert state[("m.room.power_levels", "")]["content"]["users"] == {bob.user_id: 50}
    assert (await ok(bob, "GET", "/directory/room/%23things:test.local"))["room_id"] == new
    assert (await ok(bob, "GET", f"/directory/list/room/{new}"))["visibility"] == "public"
    assert (await ok(bob, "GET", f"/directory/list/room/{old}"))["visibility"] == "private"

    old_state = await state_of(bob, old)
    assert old_state[("m.room.tombstone", "")]["content"]["replacement_room"] == new
    old_levels = old_state[("m.room.power_levels", "")]["content"]
    assert old_levels["events_default"] >= 50 and old_levels["invite"] >= 50
    # Ordinary members (carl, at the default 0) can no longer talk in the old room.
    status, body = await carl.request("PUT", f"/rooms/{old}/send/m.room.message/t1", {"msgtype": "m.text",
                                                                                     "body": "still here?"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    # Bob follows the tombstone into the new room.
    await ok(bob, "POST", f"/join/{new}")
    await bob.send_message(new, "hello again")


async def test_upgrade_errors(server: Any) -> None:
    alice, eve = await user(server, "alice"), await user(server, "eve")
    room = await alice.create_room(preset="private_chat")
    for body, errcode in (({"new_version": "99"}, "M_UNSUPPORTED_ROOM_VERSION"), ({}, "M_MISSING_PARAM"),
                          ({"new_version": 12}, "M_BAD_JSON"),
                          ({"new_version": "11", "additional_creators": ["@x:test.local"]}, "M_BAD_JSON"),
                          ({"new_version": "12", "additional_creators": ["not a user"]}, "M_BAD_JSON")):
        status, data = await alice.request("POST", f"/rooms/{room}/upgrade", body)
        assert status == 400 and data["errcode"] == errcode, body
    status, data = await eve.request("POST", f"/rooms/{room}/upgrade", {"new_version": "12"})
    assert status == 403
    new = (await ok(alice, "POST", f"/rooms/{room}/upgrade", {"new_version": "11"}))["replacement_room"]
    state = await state_of(alice, new)
    assert state[("m.room.create", "")]["content"]["room_version"] == "11"
    assert state[("m.room.power_levels", "")]["content"]["users"][alice.user_id] == 100
