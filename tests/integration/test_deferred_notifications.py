"""A monolith on PostgreSQL commits a message alone and the rest of its batch (notifications, unread
counts, transaction IDs, forward extremity) just after (see hs/db/stores/event_batch.py): readers
stay exact in the meantime, and a batch whose second statement never ran (the process stopped
between the two) is completed at the next start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import hs.services.events as events_module
from hs.db.stores.push import recompute_push_summary
from tests.harness import Client, ok, user

Persist = Callable[..., Awaitable[Any]]


def count_in(sync: dict[str, Any], room: str) -> int:
    return int(sync["rooms"]["join"][room]["unread_notifications"]["notification_count"])


async def alice_and_bob_in_a_room(make_server: Any) -> tuple[Any, Client, Client, str]:
    server = await make_server("postgres")
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    return server, alice, bob, room


async def notification_rows(server: Any, room: str) -> int:
    return int(await server.hs.db.fetchval("SELECT COUNT(*) FROM event_notifications WHERE room_id = $1", room))


async def test_notifications_that_never_got_stored_are_stored_at_the_next_start(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, alice, bob, room = await alice_and_bob_in_a_room(make_server)
    for i in range(2):
        await alice.send_message(room, f"stored {i}")
    await server.hs.event_sender.flush_rests()
    assert await notification_rows(server, room) == 2

    async def lost(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the process stopped here")

    monkeypatch.setattr(events_module, "persist_rest", lost)
    lost_ids = [await alice.send_message(room, f"lost {i}", txn_id=f"lost{i}") for i in range(3)]
    await server.hs.event_sender.flush_rests()
    assert await notification_rows(server, room) == 2
    monkeypatch.undo()

    await server.restart()
    assert await notification_rows(server, room) == 5
    assert count_in(await bob.sync(), room) == 5
    # The transaction IDs were stored too: a retry after the restart is answered with the same event.
    assert await alice.send_message(room, "lost 1", txn_id="lost1") == lost_ids[1]
    # And the room's stored head is its newest event: the next message follows it.
    extremities = await server.hs.db.fetch("SELECT event_id FROM event_forward_extremities WHERE room_id = $1",
                                           room)
    assert [r["event_id"] for r in extremities] == [lost_ids[-1]]
    after = await alice.send_message(room, "after the restart")
    event = (await ok(alice, "GET", f"/rooms/{room}/event/{after}"))
    assert event["content"]["body"] == "after the restart"
    assert count_in(await bob.sync(), room) == 6
    # Stored once: another restart finds nothing left to do.
    await server.hs.event_sender.flush_rests()
    await server.restart()
    assert await notification_rows(server, room) == 6
    assert count_in(await bob.sync(), room) == 6


async def test_a_reader_without_cached_counts_waits_for_the_notifications(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, alice, bob, room = await alice_and_bob_in_a_room(make_server)
    release = asyncio.Event()
    real: Persist = events_module.persist_rest

    async def held(*args: Any, **kwargs: Any) -> Any:
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(events_module, "persist_rest", held)
    await alice.send_message(room, "hello")
    server.hs.push_store.unread.clear()  # a reader that must ask the database
    sync = asyncio.create_task(bob.sync())
    await asyncio.sleep(0.3)
    assert not sync.done()
    release.set()
    assert count_in(await sync, room) == 1


async def test_a_read_receipt_right_after_a_message_counts_it_as_read(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, alice, bob, room = await alice_and_bob_in_a_room(make_server)
    real: Persist = events_module.persist_rest

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real(*args, **kwargs)

    monkeypatch.setattr(events_module, "persist_rest", slow)
    event_id = await alice.send_message(room, "read me")
    # Bob's cached count has it at once.
    assert count_in(await bob.sync(), room) == 1
    await ok(bob, "POST", f"/rooms/{room}/receipt/m.read/{event_id}", {})
    await server.hs.event_sender.flush_rests()
    server.hs.push_store.unread.clear()
    sync = await bob.sync()
    assert sync["rooms"]["join"][room].get("unread_notifications", {}).get("notification_count", 0) == 0
    stored = await server.hs.db.fetchval(
        "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1 AND room_id = $2",
        bob.user_id, room)
    assert stored == 0


async def test_a_state_event_right_after_a_message_leaves_the_room_head_on_itself(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server("postgres")
    alice = await user(server, "alice")
    room = await alice.create_room(preset="public_chat")
    real: Persist = events_module.persist_rest

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real(*args, **kwargs)

    monkeypatch.setattr(events_module, "persist_rest", slow)
    await alice.send_message(room, "first")
    topic = (await ok(alice, "PUT", f"/rooms/{room}/state/m.room.topic", {"topic": "t"}))["event_id"]
    await server.hs.event_sender.flush_rests()
    extremities = await server.hs.db.fetch("SELECT event_id FROM event_forward_extremities WHERE room_id = $1",
                                           room)
    assert [r["event_id"] for r in extremities] == [topic]


async def test_counts_stay_exact_under_concurrent_sends_and_receipts(make_server: Any) -> None:
    """Messages into several rooms at once, read receipts racing them: the stored unread summaries
    equal a recount from the notifications (a recount overlapping an increment once overwrote it),
    and every /sync count equals the stored one."""
    server, alice, bob, room = await alice_and_bob_in_a_room(make_server)
    rooms = [room]
    for _ in range(2):
        other = await alice.create_room(preset="public_chat")
        await ok(bob, "POST", f"/join/{other}")
        rooms.append(other)

    async def send_and_read(r: str) -> None:
        for i in range(15):
            await asyncio.gather(*(alice.send_message(r, f"{r} {i}.{k}") for k in range(3)))
            if i % 4 == 3:  # read up to a message sent after the three concurrent ones
                last = await alice.send_message(r, f"{r} {i} last")
                receipt = asyncio.create_task(ok(bob, "POST", f"/rooms/{r}/receipt/m.read/{last}", {}))
                await asyncio.sleep(0)  # the receipt races the room's next messages
                receipts.append(receipt)

    receipts: list[asyncio.Task[Any]] = []
    await asyncio.gather(*(send_and_read(r) for r in rooms))
    await asyncio.gather(*receipts)
    await server.hs.event_sender.flush_rests()
    sync = await bob.sync()
    db = server.hs.db
    for r in rooms:
        stored = await db.fetchval(
            "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1 AND room_id = $2",
            bob.user_id, r)
        assert count_in(sync, r) == stored

        async def recount(c: Any, r: str = r) -> None:
            await recompute_push_summary(c, bob.user_id, r)

        await db.run_transaction("recount", recount)
        recounted = await db.fetchval(
            "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1 AND room_id = $2",
            bob.user_id, r)
        assert stored == recounted
        # The last receipt (i = 11) covered everything before it: the 3 x 3 messages of i = 12, 13, 14.
        assert stored == 9


async def test_a_reader_waiting_for_one_room_keeps_no_stale_counts_of_another(
        make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader without cached counts waits for each room's pending notifications, then reads the
    database. While it waited for one room, another room's message committed with its notifications
    still to come (held here): what the reader then read of that room lacks the message, and must
    not be cached, or the cached count stays one behind from then on (later messages add to it)."""
    server, alice, bob, first = await alice_and_bob_in_a_room(make_server)
    second = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{second}")
    await server.hs.event_sender.flush_rests()
    held = {first: asyncio.Event(), second: asyncio.Event()}
    real: Persist = events_module.persist_rest

    async def held_rest(db: Any, room_id: str, *args: Any, **kwargs: Any) -> Any:
        await held[room_id].wait()
        return await real(db, room_id, *args, **kwargs)

    monkeypatch.setattr(events_module, "persist_rest", held_rest)
    store = server.hs.push_store
    await alice.send_message(second, "in the second room")
    store.unread.clear()  # a reader that must ask the database for both rooms
    reading = asyncio.create_task(store.get_unread_counts(bob.user_id, [first, second], 0))
    await asyncio.sleep(0.2)
    assert not reading.done()  # waiting for the second room's notifications
    await alice.send_message(first, "in the first room")  # its notifications held
    held[second].set()
    await reading
    held[first].set()
    await server.hs.event_sender.flush_rests()
    sync = await bob.sync()
    assert count_in(sync, first) == 1 and count_in(sync, second) == 1
    await alice.send_message(first, "one more")
    assert count_in(await bob.sync(), first) == 2
