"""Connections over time: a position survives a server restart (state is in the database), a quiet
long-poll answers empty at its timeout, a burst of messages beyond timeline_limit is `limited`, and a
room subscription to a room the user may not see gives nothing."""

from __future__ import annotations

import time
from typing import Any

from tests.sliding_sync.client import Target, timeline_bodies

BODY = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 3, "required_state": [["m.room.name", ""]]}}}


async def test_position_survives_restart(target: Target) -> None:
    if target.kind != "hs":
        return  # the test restarts the server in-process
    alice = await target.user("alice")
    room = await alice.create_room(name="durable")
    await alice.send_message(room, "before the restart")
    await alice.slide(BODY, pos=None)
    await target.extra["server"].restart()
    await alice.reconnect()  # the old keep-alive connection is gone with the server
    after = await alice.slide(BODY)
    assert after.get("rooms", {}) == {}, "an unchanged room was sent again after the restart"
    await alice.send_message(room, "after the restart")
    later = await alice.slide(BODY)
    assert timeline_bodies(later["rooms"][room]) == ["after the restart"]
    assert "initial" not in later["rooms"][room] or later["rooms"][room]["initial"] is False


async def test_quiet_long_poll_answers_at_timeout(target: Target) -> None:
    alice = await target.user("alice")
    room = await alice.create_room(name="quiet")
    await alice.slide(BODY, pos=None)
    began = time.monotonic()
    resp = await alice.slide(BODY, timeout=1000)
    elapsed = time.monotonic() - began
    assert resp.get("rooms", {}) == {}
    assert resp["lists"]["all"]["count"] == 1
    # It waited (most of) its timeout, and not much longer.
    assert 0.8 <= elapsed < 6.0, elapsed
    assert room


async def test_burst_beyond_timeline_limit_is_limited(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    room = await alice.create_room(name="burst", preset="public_chat")
    await bob.call("POST", f"/join/{room}", {})
    await alice.slide(BODY, pos=None)
    for i in range(6):
        await bob.send_message(room, f"burst {i}")
    resp = await alice.slide(BODY)
    entry = resp["rooms"][room]
    assert timeline_bodies(entry) == ["burst 3", "burst 4", "burst 5"]
    assert entry["limited"] is True
    assert entry["num_live"] == 3
    assert entry["prev_batch"]
    # The gap can be filled from prev_batch with /messages.
    status, page = await alice.request("GET", f"/rooms/{room}/messages",
                                       params={"from": entry["prev_batch"], "dir": "b", "limit": "3"})
    assert status == 200, page
    assert [e["content"].get("body") for e in page["chunk"]] == ["burst 2", "burst 1", "burst 0"]


async def test_subscription_to_unseen_room_gives_nothing(target: Target) -> None:
    alice = await target.user("alice")
    bob = await target.user("bob")
    private = await bob.create_room(name="bob's private room", preset="private_chat")
    await bob.send_message(private, "not for alice")
    unknown = "!doesnotexist:" + target.server_name
    sub: dict[str, Any] = {"timeline_limit": 10, "required_state": [["*", "*"]]}
    resp = await alice.slide({**BODY, "room_subscriptions": {private: sub, unknown: sub}}, pos=None)
    assert "not for alice" not in str(resp)
    assert "bob's private room" not in str(resp)
    assert set(resp.get("rooms", {})) <= {private, unknown}
    for entry in resp.get("rooms", {}).values():
        assert not entry.get("timeline") and not entry.get("required_state"), entry


async def test_abandoned_long_poll_then_same_pos(target: Target) -> None:
    """Element X drops a pending long-poll when its view changes and asks again from the same pos with
    new lists: that works, and nothing is lost (the abandoned poll's position is not the one used)."""
    import asyncio

    alice = await target.user("alice")
    bob = await target.user("bob")
    rooms = [await alice.create_room(name=f"room {i}", preset="public_chat") for i in range(3)]
    await bob.call("POST", f"/join/{rooms[0]}", {})
    small = {"lists": {"all": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": []}}}
    first = await alice.slide(small, pos=None)
    assert len(first["rooms"]) == 1
    pos = alice.pos

    poll = asyncio.create_task(alice.sync_raw(small, pos=pos, timeout=20000))
    await asyncio.sleep(0.3)
    assert not poll.done()
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    await alice.reconnect()
    await bob.send_message(rooms[0], "while nobody listened")

    # A concurrent pair too: a long-poll pending while the client asks again from the same pos.
    pending = asyncio.create_task(alice.sync_raw(small, pos=pos, timeout=2000))
    wide = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}}}
    grown = await alice.slide(wide, pos=pos)
    await asyncio.gather(pending, return_exceptions=True)
    assert grown["lists"]["all"]["count"] == 3
    # The rooms not sent yet and the one with the new message; a room already sent and unchanged need
    # not come again. (Which room [0,0] showed first differs: Synapse orders by the latest event of
    # any kind, so bob's join put room 0 first there; hs by bump_stamp, room 2.)
    assert (set(rooms) - set(first["rooms"])) | {rooms[0]} <= set(grown["rooms"]) <= set(rooms)
    assert timeline_bodies(grown["rooms"][rooms[0]]) == ["while nobody listened"]
    after = await alice.slide(wide)
    assert after.get("rooms", {}) == {}
