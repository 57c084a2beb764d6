"""POST /rooms/{roomId}/upgrade: the replacement room keeps the state, aliases and listing; the old
room gets a tombstone and is locked for ordinary members."""

from __future__ import annotations

from typing import Any

from tests.harness import Client, ok, user
from tests.integration.faults import InjectedFailure, failing_transaction, row_counts


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


# -- all-or-nothing, then resumable ------------------------------------------------------------------------

async def successors(server: Any, room: str) -> list[str]:
    rows = await server.hs.db.fetch("SELECT room_id FROM rooms WHERE predecessor_room_id = $1", room)
    return [r["room_id"] for r in rows]


async def old_room(alice: Client, bob: Client, alias: str) -> str:
    """A v10 room with what an upgrade carries over: alias, listing, name, a ban, encryption."""
    room = (await ok(alice, "POST", "/createRoom", {
        "preset": "public_chat", "room_version": "10", "name": "Old", "room_alias_name": alias,
        "visibility": "public"}))["room_id"]
    await ok(bob, "POST", f"/join/{room}")
    await ok(alice, "POST", f"/rooms/{room}/ban", {"user_id": "@spam:test.local"})
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    return room


async def assert_untouched(alice: Client, room: str, alias: str) -> None:
    state = await state_of(alice, room)
    assert ("m.room.tombstone", "") not in state
    assert state[("m.room.canonical_alias", "")]["content"]["alias"] == f"#{alias}:test.local"
    assert state[("m.room.power_levels", "")]["content"]["events_default"] == 0
    assert (await ok(alice, "GET", f"/directory/room/%23{alias}:test.local"))["room_id"] == room
    assert (await ok(alice, "GET", f"/directory/list/room/{room}"))["visibility"] == "public"


async def assert_upgraded(alice: Client, old: str, new: str, alias: str) -> None:
    old_state = await state_of(alice, old)
    assert old_state[("m.room.tombstone", "")]["content"]["replacement_room"] == new
    assert old_state[("m.room.power_levels", "")]["content"]["events_default"] >= 50
    state = await state_of(alice, new)
    assert state[("m.room.create", "")]["content"]["predecessor"] == {"room_id": old}
    assert state[("m.room.name", "")]["content"]["name"] == "Old"
    assert state[("m.room.member", "@spam:test.local")]["content"]["membership"] == "ban"
    assert state[("m.room.encryption", "")]["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.canonical_alias", "")]["content"]["alias"] == f"#{alias}:test.local"
    assert (await ok(alice, "GET", f"/directory/room/%23{alias}:test.local"))["room_id"] == new
    assert (await ok(alice, "GET", f"/directory/list/room/{new}"))["visibility"] == "public"
    assert (await ok(alice, "GET", f"/directory/list/room/{old}"))["visibility"] == "private"


async def check_failed_upgrade(server: Any, alice: Client, old: str, alias: str) -> None:
    """After an injected failure: no new room and the old one untouched, or a new room a retry finishes
    (the same room, not another)."""
    found = await successors(server, old)
    if not found:
        await assert_untouched(alice, old, alias)
        return
    assert len(found) == 1
    again = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))["replacement_room"]
    assert again == found[0]
    assert await successors(server, old) == found
    await assert_upgraded(alice, old, again, alias)


async def test_upgrade_fails_whole_or_resumes_at_every_build_step(server: Any, monkeypatch: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    sender = server.hs.event_sender
    original = sender._build
    calls, fail_at = [0], [0]

    async def build(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == fail_at[0]:
            raise InjectedFailure(f"build step {calls[0]}")
        return await original(*args, **kwargs)

    old = await old_room(alice, bob, "b0")
    monkeypatch.setattr(sender, "_build", build)
    await assert_upgraded(alice, old, (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))[
        "replacement_room"], "b0")
    steps = calls[0]  # the new room's events, then the old room's canonical alias, tombstone, levels
    monkeypatch.undo()
    for step in range(1, steps + 1):
        old = await old_room(alice, bob, f"b{step}")
        monkeypatch.setattr(sender, "_build", build)
        calls[0], fail_at[0] = 0, step
        status, body = await alice.request("POST", f"/rooms/{old}/upgrade", {"new_version": "12"})
        monkeypatch.undo()
        if step in (steps - 2, steps):  # clearing the old alias, restricting the old room: logged
            assert status == 200, body
            assert (await successors(server, old)) == [body["replacement_room"]]
            tombstone = (await state_of(alice, old))[("m.room.tombstone", "")]["content"]
            assert tombstone["replacement_room"] == body["replacement_room"]
            continue
        assert status == 500, body
        if step < steps - 2:  # one of the new room's events: no new room at all
            assert await successors(server, old) == []
        await check_failed_upgrade(server, alice, old, f"b{step}")


async def test_upgrade_fails_whole_at_every_statement_of_the_new_room(server: Any, monkeypatch: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    fail_at = 1
    while True:
        old = await old_room(alice, bob, f"s{fail_at}")
        before = await row_counts(server.hs.db)
        with failing_transaction(monkeypatch, server.hs.db, "persist_events", fail_at, first_only=True):
            status, body = await alice.request("POST", f"/rooms/{old}/upgrade", {"new_version": "12"})
        if status == 200:
            assert fail_at > 20
            await assert_upgraded(alice, old, body["replacement_room"], f"s{fail_at}")
            break
        assert status == 500, body
        assert await row_counts(server.hs.db) == before
        await assert_untouched(alice, old, f"s{fail_at}")
        fail_at += 1


async def test_upgrade_resumes_after_the_tombstone_failed(server: Any, monkeypatch: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    old = await old_room(alice, bob, "tomb")
    sender = server.hs.event_sender
    send = sender.send

    async def no_tombstone(room_id: str, user_id: str, etype: str, *args: Any, **kwargs: Any) -> Any:
        if etype == "m.room.tombstone":
            raise InjectedFailure("tombstone")
        return await send(room_id, user_id, etype, *args, **kwargs)

    monkeypatch.setattr(sender, "send", no_tombstone)
    status, _ = await alice.request("POST", f"/rooms/{old}/upgrade", {"new_version": "12"})
    assert status == 500
    monkeypatch.undo()
    (new,) = await successors(server, old)
    assert ("m.room.tombstone", "") not in await state_of(alice, old)
    # Another version is another upgrade; the same one finishes the first.
    other = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "11"}))["replacement_room"]
    assert other != new
    assert (await state_of(alice, old))[("m.room.tombstone", "")]["content"]["replacement_room"] == other
    # Once tombstoned, an upgrade is a new one again: nothing to resume.
    third = (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))["replacement_room"]
    assert third not in (new, other)
    assert sorted(await successors(server, old)) == sorted([new, other, third])


async def test_upgrade_resumes_with_the_same_room(server: Any, monkeypatch: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    old = await old_room(alice, bob, "again")
    sender = server.hs.event_sender
    send = sender.send

    async def no_tombstone(room_id: str, user_id: str, etype: str, *args: Any, **kwargs: Any) -> Any:
        if etype == "m.room.tombstone":
            raise InjectedFailure("tombstone")
        return await send(room_id, user_id, etype, *args, **kwargs)

    monkeypatch.setattr(sender, "send", no_tombstone)
    status, _ = await alice.request("POST", f"/rooms/{old}/upgrade", {"new_version": "12"})
    assert status == 500
    monkeypatch.undo()
    (new,) = await successors(server, old)
    # The aliases and listing moved with the new room, atomically.
    assert (await ok(alice, "GET", "/directory/room/%23again:test.local"))["room_id"] == new
    assert (await ok(alice, "POST", f"/rooms/{old}/upgrade", {"new_version": "12"}))["replacement_room"] == new
    assert await successors(server, old) == [new]
    await assert_upgraded(alice, old, new, "again")


async def test_upgrade_of_levels_no_integer_can_be_made_of(server: Any) -> None:
    """Room versions before 10 store power levels as strings; those that are no integer (or none in
    canonical JSON's range) are left out of the new room instead of failing the upgrade midway."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat", room_version="9")
    await ok(bob, "POST", f"/join/{room}")
    levels = (await state_of(alice, room))[("m.room.power_levels", "")]["content"]
    await ok(alice, "PUT", f"/rooms/{room}/state/m.room.power_levels", {
        **levels, "kick": "-99999999999999999999", "redact": " +40 ", "invite": "²", "state_default": "012",
        "events": {**levels["events"], "m.room.topic": "--5", "m.room.avatar": "30"},
        "users": {alice.user_id: 100, bob.user_id: "60"}})
    before = await row_counts(server.hs.db)
    new = (await ok(alice, "POST", f"/rooms/{room}/upgrade", {"new_version": "12"}))["replacement_room"]
    assert await successors(server, room) == [new]
    new_levels = (await state_of(alice, new))[("m.room.power_levels", "")]["content"]
    assert new_levels["redact"] == 40 and new_levels["state_default"] == 12
    assert "kick" not in new_levels and "invite" not in new_levels
    assert new_levels["events"]["m.room.avatar"] == 30 and "m.room.topic" not in new_levels["events"]
    assert new_levels["users"] == {bob.user_id: 60}
    assert (await row_counts(server.hs.db))["rooms"] == before["rooms"] + 1
    assert (await state_of(bob, room))[("m.room.tombstone", "")]["content"]["replacement_room"] == new
