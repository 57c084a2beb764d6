"""matrix-nio as a real client against a real homeserver (SQLite and PostgreSQL): register, log in,
create a room, invite, join, chat, sync, paginate 200 messages, and a late joiner's view."""

from __future__ import annotations

from typing import Any

import nio
import pytest

from tests.harness import TestHomeServer


async def nio_user(base_url: str, server_name: str, name: str, tmp_path: Any) -> nio.AsyncClient:
    """Register through nio, then log in a fresh nio client (a second device)."""
    reg = nio.AsyncClient(base_url, name, store_path=str(tmp_path))
    resp = await reg.register(name, "secret-password", device_name="reg-device")
    assert isinstance(resp, nio.RegisterResponse), resp
    await reg.close()
    client = nio.AsyncClient(base_url, f"@{name}:{server_name}", store_path=str(tmp_path))
    login = await client.login("secret-password", device_name="nio")
    assert isinstance(login, nio.LoginResponse), login
    return client


def _bodies(timeline_events: list[Any]) -> list[str]:
    return [e.body for e in timeline_events if isinstance(e, nio.RoomMessageText)]


async def test_two_users_chat_paginate_and_late_joiner(server: TestHomeServer, tmp_path: Any) -> None:
    await chat_paginate_and_late_joiner(server.base_url, "test.local", tmp_path)


async def chat_paginate_and_late_joiner(base_url: str, server_name: str, tmp_path: Any, suffix: str = "") -> None:
    """The core issue's client flow; the cluster tests run it through nginx unchanged."""
    alice = await nio_user(base_url, server_name, "alice" + suffix, tmp_path)
    bob = await nio_user(base_url, server_name, "bob" + suffix, tmp_path)
    carol = await nio_user(base_url, server_name, "carol" + suffix, tmp_path)
    try:
        created = await alice.room_create(name="Chat", topic="nio test")
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id

        assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
        first = await bob.sync(timeout=0)
        assert isinstance(first, nio.SyncResponse)
        assert room_id in first.rooms.invite
        joined = await bob.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined

        await alice.sync(timeout=0)
        await bob.sync(timeout=0)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bob"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        bob_sync = await bob.sync(timeout=5000)
        assert "hello bob" in _bodies(bob_sync.rooms.join[room_id].timeline.events)

        reply = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"})
        assert isinstance(reply, nio.RoomSendResponse)
        alice_sync = await alice.sync(timeout=5000)
        assert "hi alice" in _bodies(alice_sync.rooms.join[room_id].timeline.events)
        assert alice.rooms[room_id].display_name == "Chat"
        assert set(alice.rooms[room_id].users) == {alice.user_id, bob.user_id}

        # The room becomes members-only for history before the late joiner arrives.
        hv = await alice.room_put_state(room_id, "m.room.history_visibility", {"history_visibility": "joined"})
        assert isinstance(hv, nio.RoomPutStateResponse), hv
        for i in range(200):
            r = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"msg {i}"})
            assert isinstance(r, nio.RoomSendResponse), r

        # Bob paginates back through all 200 messages from his sync's prev_batch.
        bob_sync = await bob.sync(timeout=0)
        timeline = bob_sync.rooms.join[room_id].timeline
        seen = _bodies(timeline.events)
        token = timeline.prev_batch
        while token:
            page = await bob.room_messages(room_id, start=token, limit=50)
            assert isinstance(page, nio.RoomMessagesResponse), page
            seen = list(reversed(_bodies(page.chunk))) + seen
            if not page.chunk or page.end is None:
                break
            token = page.end
        expected = [f"msg {i}" for i in range(200)]
        assert [b for b in seen if b.startswith("msg ")] == expected
        assert "hello bob" in seen and "hi alice" in seen

        # Carol joins later: she gets the room's state but none of the history sent before she joined.
        pub = await alice.room_put_state(room_id, "m.room.join_rules", {"join_rule": "public"})
        assert isinstance(pub, nio.RoomPutStateResponse)
        assert isinstance(await carol.join(room_id), nio.JoinResponse)
        after = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "welcome carol"})
        assert isinstance(after, nio.RoomSendResponse)
        carol_sync = await carol.sync(timeout=0, full_state=True)
        room = carol.rooms[room_id]
        assert room.display_name == "Chat"
        assert room.topic == "nio test"
        assert {alice.user_id, bob.user_id, carol.user_id} <= set(room.users)
        carol_bodies = _bodies(carol_sync.rooms.join[room_id].timeline.events)
        assert "welcome carol" in carol_bodies
        assert not [b for b in carol_bodies if b.startswith("msg ") or b in ("hello bob", "hi alice")]
        page = await carol.room_messages(room_id, start=carol_sync.rooms.join[room_id].timeline.prev_batch,
                                         limit=100)
        assert isinstance(page, nio.RoomMessagesResponse), page
        assert not [b for b in _bodies(page.chunk) if b.startswith("msg ") or b in ("hello bob", "hi alice")]
    finally:
        for c in (alice, bob, carol):
            await c.close()


@pytest.mark.parametrize("engine", ["sqlite"])
async def test_nio_lists_devices_including_one_without_a_name(server: TestHomeServer, tmp_path: Any) -> None:
    """nio's devices() requires display_name, last_seen_ip and last_seen_ts in every device (null is
    fine, as Synapse sends): a device registered without a name must not break it."""
    alice = await nio_user(server.base_url, "test.local", "dora", tmp_path)
    try:
        await server.hs.db.execute("UPDATE devices SET display_name = NULL WHERE user_id = $1", alice.user_id)
        devices = await alice.devices()
        assert isinstance(devices, nio.DevicesResponse), devices
        assert len(devices.devices) == 2 and alice.device_id in {d.id for d in devices.devices}
        assert all(d.display_name is None for d in devices.devices)
        mine = next(d for d in devices.devices if d.id == alice.device_id)
        assert mine.last_seen_ip == "127.0.0.1" and mine.last_seen_date is not None
    finally:
        await alice.close()


async def test_nio_messages_are_idempotent_per_txn(server: TestHomeServer, tmp_path: Any) -> None:
    alice = await nio_user(server.base_url, "test.local", "dave", tmp_path)
    try:
        room_id = (await alice.room_create(name="Idem")).room_id
        await alice.sync(timeout=0)  # nio (with e2e support) only sends into rooms it has synced
        a = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "once"}, tx_id="t1")
        b = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "once"}, tx_id="t1")
        assert a.event_id == b.event_id
        timeline = (await alice.sync(timeout=0)).rooms.join[room_id].timeline
        page = await alice.room_messages(room_id, start=timeline.prev_batch, limit=50)
        assert isinstance(page, nio.RoomMessagesResponse), page
        bodies = _bodies(timeline.events) + _bodies(page.chunk)
        assert bodies.count("once") == 1
    finally:
        await alice.close()
