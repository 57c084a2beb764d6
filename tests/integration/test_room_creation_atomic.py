"""Room creation is all-or-nothing: a failure at any step (an event the rules refuse, any statement of
the persist transaction, an alias taken meanwhile) leaves no room, alias, listing, membership or
invite behind, and a retry succeeds; rooms created concurrently by one user in the same millisecond
never collide (v12 room IDs are create event hashes). Both engines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hs.db.stores.rooms import RoomIdTaken
from hs.services import events as events_module
from tests.harness import Client, TestHomeServer, ok, user
from tests.integration.faults import InjectedFailure, failing_transaction, row_counts

FROZEN_MS = 1_767_225_600_000


def full_request(alias: str, invitee: str) -> dict[str, Any]:
    """A createRoom request using every step: alias, listing, presets, initial state, name, topic, invite."""
    return {
        "preset": "public_chat", "visibility": "public", "room_alias_name": alias, "name": "Atomic",
        "topic": "All or nothing", "invite": [invitee],
        "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                          {"type": "m.custom.thing", "state_key": "k", "content": {"n": 1}}],
        "power_level_content_override": {"events_default": 10},
    }


async def assert_nothing_left(server: TestHomeServer, before: dict[str, int], alice: Client, bob: Client,
                              alias: str) -> None:
    assert await row_counts(server.hs.db) == before
    status, body = await alice.request("GET", f"/directory/room/%23{alias}:test.local")
    assert status == 404, body
    assert (await ok(alice, "GET", "/joined_rooms"))["joined_rooms"] == []
    assert (await ok(alice, "GET", "/publicRooms"))["chunk"] == []
    assert (await bob.sync()).get("rooms", {}).get("invite", {}) == {}


async def assert_complete(alice: Client, bob: Client, room_id: str, alias: str) -> None:
    state = {(e["type"], e["state_key"]): e["content"] for e in await ok(alice, "GET", f"/rooms/{room_id}/state")}
    assert state[("m.room.name", "")]["name"] == "Atomic"
    assert state[("m.room.topic", "")]["topic"] == "All or nothing"
    assert state[("m.room.canonical_alias", "")]["alias"] == f"#{alias}:test.local"
    assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.custom.thing", "k")] == {"n": 1}
    assert state[("m.room.power_levels", "")]["events_default"] == 10
    assert state[("m.room.member", bob.user_id)]["membership"] == "invite"
    assert (await ok(alice, "GET", f"/directory/room/%23{alias}:test.local"))["room_id"] == room_id
    assert [r["room_id"] for r in (await ok(alice, "GET", "/publicRooms"))["chunk"]] == [room_id]
    assert room_id in (await bob.sync()).get("rooms", {}).get("invite", {})


async def test_a_refused_event_at_any_step_leaves_no_room(server: TestHomeServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    sender = server.hs.event_sender
    original = sender._build
    calls = [0]
    fail_at = [0]

    async def build(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == fail_at[0]:
            raise InjectedFailure(f"build step {calls[0]}")
        return await original(*args, **kwargs)

    monkeypatch.setattr(sender, "_build", build)
    before = await row_counts(server.hs.db)
    steps = 11  # join, power levels, alias, join rules, history, guest access, 2 initial state, name, topic, invite
    for step in range(1, steps + 1):
        calls[0], fail_at[0] = 0, step
        status, body = await alice.request("POST", "/createRoom", full_request("atomic", bob.user_id))
        assert status == 500, (step, body)
        assert calls[0] == step
        await assert_nothing_left(server, before, alice, bob, "atomic")
    calls[0], fail_at[0] = 0, 0
    room_id = (await ok(alice, "POST", "/createRoom", full_request("atomic", bob.user_id)))["room_id"]
    assert calls[0] == steps
    await assert_complete(alice, bob, room_id, "atomic")


async def test_a_failed_statement_anywhere_in_the_transaction_leaves_no_room(
        server: TestHomeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    before = await row_counts(server.hs.db)
    fail_at = 1
    while True:
        with failing_transaction(monkeypatch, server.hs.db, "persist_events", fail_at) as ran:
            status, body = await alice.request("POST", "/createRoom", full_request("stmt", bob.user_id))
        if status == 200:  # fail_at is past the transaction's last statement
            assert ran[0] == fail_at - 1 and fail_at > 20
            break
        assert status == 500, (fail_at, body)
        await assert_nothing_left(server, before, alice, bob, "stmt")
        fail_at += 1
    await assert_complete(alice, bob, body["room_id"], "stmt")


async def test_refused_initial_state_leaves_no_room(server: TestHomeServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    before = await row_counts(server.hs.db)
    bad_requests = [
        # v12 power levels must be integers: refused by the auth rules, after the join was built.
        ({**full_request("refused", bob.user_id), "power_level_content_override": {"ban": "50"}},
         400, "M_INVALID_ROOM_STATE"),
        ({**full_request("refused", bob.user_id), "initial_state": [
            {"type": "m.room.member", "state_key": bob.user_id, "content": {"membership": "join"}}]},
         400, "M_INVALID_ROOM_STATE"),
        ({**full_request("refused", bob.user_id), "initial_state": [
            {"type": "m.big", "content": {"x": "y" * 70000}}]}, 413, "M_TOO_LARGE"),
        ({**full_request("refused", bob.user_id), "initial_state": [
            {"type": "m.float", "content": {"x": 1.5}}]}, 400, "M_BAD_JSON"),
    ]
    for body, code, errcode in bad_requests:
        status, answer = await alice.request("POST", "/createRoom", body)
        assert (status, answer.get("errcode")) == (code, errcode), answer
        await assert_nothing_left(server, before, alice, bob, "refused")
    room_id = (await ok(alice, "POST", "/createRoom", full_request("refused", bob.user_id)))["room_id"]
    await assert_complete(alice, bob, room_id, "refused")


async def test_an_alias_taken_meanwhile_leaves_no_room(server: TestHomeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    first = (await ok(alice, "POST", "/createRoom", {"room_alias_name": "taken"}))["room_id"]
    before = await row_counts(server.hs.db)

    async def no_alias(alias: str) -> None:  # the check before creating sees it free: a race
        return None

    monkeypatch.setattr(server.hs.room_store, "get_alias", no_alias)
    status, body = await alice.request("POST", "/createRoom", {"room_alias_name": "taken", "name": "Second"})
    assert (status, body["errcode"]) == (400, "M_ROOM_IN_USE")
    assert await row_counts(server.hs.db) == before
    monkeypatch.undo()
    assert (await ok(bob, "GET", "/directory/room/%23taken:test.local"))["room_id"] == first
    assert (await ok(alice, "GET", "/joined_rooms"))["joined_rooms"] == [first]


async def test_concurrent_creations_in_one_millisecond_get_distinct_rooms(
        server: TestHomeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await user(server, "alice")
    monkeypatch.setattr(events_module, "now_ms", lambda: FROZEN_MS)
    body = {"preset": "private_chat", "name": "bot room"}
    answers = await asyncio.gather(*(alice.request("POST", "/createRoom", body) for _ in range(20)))
    assert [status for status, _ in answers] == [200] * 20, answers
    room_ids = {answer["room_id"] for _, answer in answers}
    assert len(room_ids) == 20
    assert set((await ok(alice, "GET", "/joined_rooms"))["joined_rooms"]) == room_ids
    for room_id in room_ids:
        name = await ok(alice, "GET", f"/rooms/{room_id}/state/m.room.name")
        assert name == {"name": "bot room"}


async def test_identical_create_events_are_retried_not_failed(server: TestHomeServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What processes of a cluster (each with its own timestamps) can do: build the same create event
    for two requests. The second finds the room taken and builds another, later one."""
    alice = await user(server, "alice")
    sender = server.hs.event_sender
    monkeypatch.setattr(events_module, "now_ms", lambda: FROZEN_MS)
    build, persist = sender.build_create_event, sender.persist_new_room
    collisions = [0]

    def build_as_another_process(*args: Any, **kwargs: Any) -> Any:
        sender._last_create_ts = 0  # as if each request arrived at a different process
        return build(*args, **kwargs)

    async def counting_persist(*args: Any, **kwargs: Any) -> Any:
        try:
            return await persist(*args, **kwargs)
        except RoomIdTaken:
            collisions[0] += 1
            raise

    monkeypatch.setattr(sender, "build_create_event", build_as_another_process)
    monkeypatch.setattr(sender, "persist_new_room", counting_persist)
    answers = await asyncio.gather(*(alice.request("POST", "/createRoom", {"name": "same"}) for _ in range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    assert len({answer["room_id"] for _, answer in answers}) == 8
    assert collisions[0] >= 7
    assert len((await ok(alice, "GET", "/joined_rooms"))["joined_rooms"]) == 8


async def test_every_room_version_is_created_whole(server: TestHomeServer) -> None:
    """Each event of a new room is built on the one before in memory, in every event format (v1's
    event IDs and hashed references, v3's hashes as IDs, v12's room ID from the create event)."""
    alice, bob = await user(server, "alice"), await user(server, "bob")
    for version in [str(v) for v in range(1, 13)]:
        body = {**full_request(f"v{version}", bob.user_id), "room_version": version}
        room_id = (await ok(alice, "POST", "/createRoom", body))["room_id"]
        assert room_id.endswith(":test.local") == (version != "12")
        state = {(e["type"], e["state_key"]): e for e in await ok(alice, "GET", f"/rooms/{room_id}/state")}
        assert state[("m.room.create", "")]["content"]["room_version"] == version
        assert state[("m.room.topic", "")]["content"]["topic"] == "All or nothing"
        assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
        assert (await ok(alice, "GET", f"/directory/room/%23v{version}:test.local"))["room_id"] == room_id
        # The invitee can follow the invite into the room: the room's head is usable after creation.
        await ok(bob, "POST", f"/join/{room_id}")
        await alice.send_message(room_id, f"in v{version}")
