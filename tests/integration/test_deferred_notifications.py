"""A monolith on PostgreSQL commits a message's notifications just after the message itself (see
hs/db/stores/event_batch.py): counts stay exact for every reader in the meantime, and notifications
whose statement never ran (the process stopped between the two) are stored at the next start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import hs.services.events as events_module
from tests.harness import ok, user

Persist = Callable[..., Awaitable[Any]]


def count_in(sync: dict[str, Any], room: str) -> int:
    return int(sync["rooms"]["join"][room]["unread_notifications"]["notification_count"])


async def notification_rows(server: Any, room: str) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM event_notifications WHERE room_id = $1", room))


async def test_notifications_that_never_got_stored_are_stored_at_the_next_start(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server("postgres")
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    for i in range(2):
        await alice.send_message(room, f"stored {i}")
    await server.hs.event_sender.flush_notifications()
    assert await notification_rows(server, room) == 2

    async def lost(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the process stopped here")

    monkeypatch.setattr(events_module, "persist_notifications", lost)
    for i in range(3):
        await alice.send_message(room, f"lost {i}")
    await server.hs.event_sender.flush_notifications()
    assert await notification_rows(server, room) == 2
    monkeypatch.undo()

    await server.restart()
    assert await notification_rows(server, room) == 5
    assert count_in(await bob.sync(), room) == 5
    # Stored once: another restart finds nothing left to do.
    await server.restart()
    assert await notification_rows(server, room) == 5
    assert count_in(await bob.sync(), room) == 5


async def test_a_reader_without_cached_counts_waits_for_the_notifications(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server("postgres")
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    release = asyncio.Event()
    real: Persist = events_module.persist_notifications

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(events_module, "persist_notifications", held)
    await alice.send_message(room, "hello")
    server.hs.push_rules_stream.store.unread.clear()  # a reader that must ask the database
    sync = asyncio.create_task(bob.sync())
    await asyncio.sleep(0.3)
    assert not sync.done()
    release.set()
    assert count_in(await sync, room) == 1


async def test_a_read_receipt_right_after_a_message_counts_it_as_read(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server("postgres")
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    real: Persist = events_module.persist_notifications

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real(*args, **kwargs)

    monkeypatch.setattr(events_module, "persist_notifications", slow)
    event_id = await alice.send_message(room, "read me")
    # Bob's cached count has it at once.
    assert count_in(await bob.sync(), room) == 1
    await ok(bob, "POST", f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await server.hs.event_sender.flush_notifications()
    server.hs.push_rules_stream.store.unread.clear()
    sync = await bob.sync()
    assert sync["rooms"]["join"][room].get("unread_notifications", {}).get("notification_count", 0) == 0
    stored = await server.hs.db.fetchval(
        "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1 AND room_id = $2",
        bob.user_id, room)
    assert stored == 0
