"""Long-polling: each kind of change wakes a pending request, arrives in its response, and only there.

For each change (a message, a room name, typing, a receipt, a to-device message, a new device of a
room member) a long-poll (timeout 20 s) is started first, must still be pending, then the change is
made; the request must then answer well before its timeout with the change, and the next request
(timeout 0) must not carry it again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.sliding_sync.client import SlidingClient, Target, timeline_bodies

LONG_POLL_MS = 20000
# Long enough for the request to reach the server and start waiting; not an assertion on timing.
SETTLE_S = 0.3
# The answer must come well before the long-poll's own timeout.
WAKE_LIMIT_S = 8.0

EXTENSIONS_ON = {
    "e2ee": {"enabled": True},
    "account_data": {"enabled": True, "lists": ["*"], "rooms": ["*"]},
    "receipts": {"enabled": True, "lists": ["*"], "rooms": ["*"]},
    "typing": {"enabled": True, "lists": ["*"], "rooms": ["*"]},
}


@dataclass
class Scene:
    alice: SlidingClient
    bob: SlidingClient
    room: str
    event_id: str  # alice's message, which bob can mark read
    to_device_since: str | None = None
    bump_stamp: int = 0  # the room's, as first sent

    def body(self) -> dict[str, Any]:
        to_device: dict[str, Any] = {"enabled": True}
        if self.to_device_since is not None:
            to_device["since"] = self.to_device_since
        return {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5,
                                  "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]]}},
                "extensions": {**EXTENSIONS_ON, "to_device": to_device}}

    async def sync(self, timeout: int = 0) -> dict[str, Any]:
        resp = await self.alice.slide(self.body(), timeout=timeout)
        to_device = resp.get("extensions", {}).get("to_device")
        if to_device and to_device.get("next_batch"):
            self.to_device_since = to_device["next_batch"]
        return resp


async def _scene(target: Target) -> Scene:
    alice = await target.user("alice")
    bob = await target.user("bob")
    room = await alice.create_room(name="live", invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}", {})
    event_id = await alice.send_message(room, "hello bob")
    scene = Scene(alice, bob, room, event_id)
    scene.bump_stamp = (await scene.sync())["rooms"][room]["bump_stamp"]
    # A second round: whatever the first answer left pending (e.g. device list changes from bob's
    # registration) is drained before the change under test.
    await scene.sync()
    return scene


async def _long_poll(scene: Scene, change: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Start a long-poll, make the change while it is pending, return its (prompt) answer."""
    task = asyncio.create_task(scene.sync(timeout=LONG_POLL_MS))
    await asyncio.sleep(SETTLE_S)
    assert not task.done(), f"the long-poll answered before the change: {task.result()!r}"
    began = time.monotonic()
    await change()
    resp = await asyncio.wait_for(task, WAKE_LIMIT_S)
    assert time.monotonic() - began < WAKE_LIMIT_S
    return resp


def _ext(resp: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(resp.get("extensions", {}).get(name) or {})


async def test_new_message_arrives_once(target: Target) -> None:
    s = await _scene(target)
    resp = await _long_poll(s, lambda: s.bob.send_message(s.room, "a new message"))
    assert timeline_bodies(resp["rooms"][s.room]) == ["a new message"]
    assert resp["rooms"][s.room].get("num_live", 0) == 1
    assert resp["rooms"][s.room]["bump_stamp"] > s.bump_stamp
    after = await s.sync()
    assert s.room not in after.get("rooms", {})


async def test_name_change_arrives_once(target: Target) -> None:
    s = await _scene(target)
    resp = await _long_poll(s, lambda: s.alice.send_state(s.room, "m.room.name", {"name": "renamed"}))
    room = resp["rooms"][s.room]
    assert room["name"] == "renamed"
    assert [e["content"] for e in room["timeline"] if e["type"] == "m.room.name"] == [{"name": "renamed"}]
    # A rename is not one of the events that bump a room up the list.
    assert room.get("bump_stamp", s.bump_stamp) == s.bump_stamp  # (Synapse omits it when unchanged)
    after = await s.sync()
    assert s.room not in after.get("rooms", {})


async def test_typing_arrives_once(target: Target) -> None:
    s = await _scene(target)
    resp = await _long_poll(s, lambda: s.bob.call("PUT", f"/rooms/{s.room}/typing/{s.bob.user_id}",
                                                  {"typing": True, "timeout": 30000}))
    typing = _ext(resp, "typing")["rooms"][s.room]
    assert typing["type"] == "m.typing"
    assert typing["content"]["user_ids"] == [s.bob.user_id]
    after = await s.sync()
    assert s.room not in _ext(after, "typing").get("rooms", {})


async def test_receipt_arrives_once(target: Target) -> None:
    s = await _scene(target)
    resp = await _long_poll(s, lambda: s.bob.call("POST", f"/rooms/{s.room}/receipt/m.read/{s.event_id}", {}))
    receipt = _ext(resp, "receipts")["rooms"][s.room]
    assert receipt["type"] == "m.receipt"
    assert s.bob.user_id in receipt["content"][s.event_id]["m.read"]
    after = await s.sync()
    assert s.room not in _ext(after, "receipts").get("rooms", {})


async def test_to_device_arrives_once(target: Target) -> None:
    s = await _scene(target)
    content = {"secret": uuid.uuid4().hex}
    resp = await _long_poll(s, lambda: s.bob.call(
        "PUT", f"/sendToDevice/m.test.ping/{uuid.uuid4().hex}",
        {"messages": {s.alice.user_id: {s.alice.device_id: content}}}))
    events = _ext(resp, "to_device")["events"]
    assert [(e["type"], e["sender"], e["content"]) for e in events] == [("m.test.ping", s.bob.user_id, content)]
    after = await s.sync()
    assert _ext(after, "to_device").get("events", []) == []


async def test_new_device_of_member_arrives_once(target: Target) -> None:
    s = await _scene(target)

    async def new_device() -> None:
        # A login makes a device: one device list change (uploading its keys would be a second one).
        await s.bob.call("POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": s.bob.user_id},
            "password": "password123"})

    resp = await _long_poll(s, new_device)
    assert s.bob.user_id in _ext(resp, "e2ee")["device_lists"]["changed"]
    after = await s.sync()
    assert s.bob.user_id not in _ext(after, "e2ee").get("device_lists", {}).get("changed", [])
