"""A room that leaves a sliding sync list's window and comes back: what changed meanwhile in the
extensions' per-room data (room account data) reaches the client when it is back."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import TestHomeServer, ok, user
from tests.integration.test_sliding_sync_core import ss


async def test_room_account_data_set_while_out_of_the_window_arrives_when_back(make_server: Any) -> None:
    server: TestHomeServer = await make_server("sqlite")
    alice = await user(server, "alice")
    a = await alice.create_room(name="A")
    b = await alice.create_room(name="B")
    await alice.send_message(a, "a is newest")
    body = {"conn_id": "c", "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 1,
                                              "required_state": [["m.room.name", ""]]}},
            "extensions": {"account_data": {"enabled": True}}}
    first = await ss(alice, body)
    assert list(first["rooms"]) == [a]
    await alice.send_message(b, "b is newest now")  # a leaves the window
    second = await ss(alice, body, first["pos"])
    assert b in second["rooms"] and a not in second["rooms"]
    path = f"/user/{quote(alice.user_id or '')}/rooms/{quote(a)}/account_data/org.example.note"
    await ok(alice, "PUT", path, {"set": "while out"})
    await alice.send_message(b, "b again")  # (so the next response is a new position)
    third = await ss(alice, body, second["pos"])  # a is still out: not reported
    assert third["pos"] != second["pos"] and b in third["rooms"]
    assert a not in third.get("extensions", {}).get("account_data", {}).get("rooms", {})
    await alice.send_message(a, "a is back")
    back = await ss(alice, body, third["pos"])
    assert a in back["rooms"]
    notes = back["extensions"]["account_data"]["rooms"].get(a, [])
    assert {"type": "org.example.note", "content": {"set": "while out"}} in notes
