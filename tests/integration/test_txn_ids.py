"""PUT /send transaction IDs: a retry gets the original event, also after the writer restarts (its
in-memory index of stored IDs is rebuilt from the database)."""

from __future__ import annotations

from typing import Any

from tests.harness import ok, user


async def test_retry_after_restart_returns_the_original_event(server: Any) -> None:
    alice = await user(server, "alice")
    room = await alice.create_room()
    first = await alice.send_message(room, "once", txn_id="t-1")
    assert await alice.send_message(room, "once", txn_id="t-1") == first  # from memory
    await alice.send_message(room, "other", txn_id="t-2")

    await server.restart()

    assert await alice.send_message(room, "once", txn_id="t-1") == first
    # The same ID in another room, or from another device of the same user, is a new send.
    other_room = await alice.create_room()
    assert await alice.send_message(other_room, "once", txn_id="t-1") != first
    login = await ok(alice, "POST", "/login", {"type": "m.login.password", "password": "password123",
                                               "identifier": {"type": "m.id.user", "user": "alice"}})
    alice.token = login["access_token"]
    assert await alice.send_message(room, "once", txn_id="t-1") != first
    messages = await ok(alice, "GET", f"/rooms/{room}/messages", dir="b", limit="50")
    bodies = [e["content"].get("body") for e in messages["chunk"] if e["type"] == "m.room.message"]
    assert bodies.count("once") == 2 and bodies.count("other") == 1
