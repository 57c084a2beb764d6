"""GET /notifications: the events that notified the user, newest first, with actions, read state and
pagination; `only=highlight`."""

from __future__ import annotations

from typing import Any

from tests.harness import ok, user


async def test_notifications_newest_first_with_read_state_and_pages(server: Any) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await ok(bob, "POST", f"/join/{room}")
    sent = [await alice.send_message(room, f"message {i}") for i in range(5)]
    await ok(bob, "POST", f"/rooms/{room}/receipt/m.read/{sent[1]}", {})
    await alice.send_message(room, "this one mentions bob")  # bob's display name: a highlight
    await server.hs.event_sender.flush_rests()

    page = await ok(bob, "GET", "/notifications", limit="4")
    items = page["notifications"]
    assert [n["event"]["content"]["body"] for n in items] == [
        "this one mentions bob", "message 4", "message 3", "message 2"]
    assert all(n["room_id"] == room and n["event"]["room_id"] == room for n in items)
    assert [n["read"] for n in items] == [False, False, False, False]
    assert {"set_tweak": "highlight"} in items[0]["actions"] or \
        {"set_tweak": "highlight", "value": True} in items[0]["actions"]
    assert "notify" in items[1]["actions"] and isinstance(items[0]["ts"], int)
    rest = await ok(bob, "GET", "/notifications", limit="4", **{"from": page["next_token"]})
    older = rest["notifications"]
    assert [n["event"]["event_id"] for n in older[:2]] == [sent[1], sent[0]]
    # Bob's invite notified him too; the receipt covers all three.
    assert older[2]["event"]["type"] == "m.room.member" and older[2]["event"]["state_key"] == bob.user_id
    assert [n["read"] for n in older] == [True, True, True]
    assert "next_token" not in rest
    # The sender's own messages never notify her.
    assert (await ok(alice, "GET", "/notifications"))["notifications"] == []

    highlights = await ok(bob, "GET", "/notifications", only="highlight")
    assert [n["event"]["content"]["body"] for n in highlights["notifications"]] == ["this one mentions bob"]


async def test_bad_parameters(server: Any) -> None:
    bob = await user(server, "bob")
    for params in ({"from": "abc"}, {"limit": "x"}, {"limit": "0"}, {"only": "everything"}):
        status, body = await bob.request("GET", "/notifications", params=params)
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", params
