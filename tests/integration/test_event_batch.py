"""Persisting batches of plain events (PostgreSQL: one statement; SQLite: the general transaction):
everything a send writes is there, atomically, and the room stays linear."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.harness import ok, user


async def test_a_group_committed_batch_stores_events_txn_ids_and_unread_counts(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    sent = await asyncio.gather(*(alice.send_message(room, f"m{i}", txn_id=f"t{i}") for i in range(30)))
    db = server.hs.db
    await server.hs.event_sender.flush_rests()  # a monolith on PostgreSQL stores all but the events just after
    rows = await db.fetch("SELECT event_id, txn_id FROM events WHERE room_id = $1 AND type = 'm.room.message'",
                          room)
    assert {r["event_id"] for r in rows} == set(sent)
    assert {r["txn_id"] for r in rows} == {f"t{i}" for i in range(30)}
    txns = await db.fetch("SELECT txn_id, event_id FROM event_txn_ids WHERE room_id = $1", room)
    assert {(r["txn_id"], r["event_id"]) for r in txns} == {(f"t{i}", sent[i]) for i in range(30)}
    notifications = await db.fetch("SELECT event_id, notify_users FROM event_notifications WHERE room_id = $1",
                                   room)
    assert {r["event_id"] for r in notifications} == set(sent)
    assert all(json.loads(r["notify_users"]) == [bob.user_id] for r in notifications)
    sync = await bob.sync()
    assert sync["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 30
    # Linear: the room's one forward extremity is its newest event.
    extremities = await db.fetch("SELECT event_id FROM event_forward_extremities WHERE room_id = $1", room)
    newest = (await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", limit="1"))["chunk"][0]["event_id"]
    assert [r["event_id"] for r in extremities] == [newest]


async def test_a_read_receipt_is_respected_by_the_unread_count_of_later_messages(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="public_chat")
    await ok(bob, "POST", f"/join/{room}")
    first = await alice.send_message(room, "one")
    await ok(bob, "POST", f"/rooms/{room}/receipt/m.read/{first}", {})
    await alice.send_message(room, "two")
    await alice.send_message(room, "three")
    counts = (await bob.sync())["rooms"]["join"][room]["unread_notifications"]
    assert counts["notification_count"] == 2


async def test_a_room_that_lost_its_extremity_row_gets_one_again(server: Any) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    await server.hs.db.execute("DELETE FROM event_forward_extremities WHERE room_id = $1", room)
    last = await alice.send_message(room, "after")
    await server.hs.event_sender.flush_rests()
    rows = await server.hs.db.fetch("SELECT event_id FROM event_forward_extremities WHERE room_id = $1", room)
    assert [r["event_id"] for r in rows] == [last]


async def test_a_lone_event_row_holds_every_column_of_the_event(server: Any) -> None:
    """A batch of one event (the commonest) may be stored by a statement of its own: each column right."""
    alice = await user(server, "alice")
    room = await alice.create_room()
    event_id = await alice.send_message(room, "alone", txn_id="lone-txn")
    await server.hs.event_sender.flush_rests()
    rows = await server.hs.db.fetch("SELECT * FROM events WHERE event_id = $1", event_id)
    assert len(rows) == 1
    row = rows[0]
    event = await server.hs.event_store.get_event(event_id)
    assert event is not None
    assert (row["room_id"], row["type"], row["sender"], row["state_key"]) == (room, "m.room.message",
                                                                              alice.user_id, None)
    assert (row["depth"], row["origin_server_ts"]) == (event.depth, event.origin_server_ts)
    assert row["instance_name"] == server.hs.instance_name
    assert row["state_group_before"] == row["state_group_after"] == event.internal.state_group_after
    assert row["txn_id"] == "lone-txn" and row["txn_device_id"] == alice.device_id
    assert json.loads(row["json"])["content"] == {"msgtype": "m.text", "body": "alone"}
    assert row["stream_ordering"] == event.internal.stream_ordering
