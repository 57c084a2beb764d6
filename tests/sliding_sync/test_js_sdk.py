"""matrix-js-sdk (from npm) driving its own sliding sync support against hs, headless in Node.

The js-sdk's `SlidingSync` class with `client.startClient({slidingSync})` is what Element Web runs; its
current release (43.0.0) speaks the unstable simplified shape (`org.matrix.simplified_msc3575`).
tests/sliding_sync/js/room_list.mjs is started by this test and reports over stdout: the room list
as the SDK built it (order by recency, names, last messages), then each message as the SDK's live
timeline receives it. bob sends a plain message and, from a matrix-nio device, a Megolm-encrypted one
that the SDK's Rust crypto (WASM) must decrypt from what the to_device and e2ee extensions brought.

`npm ci` runs once when tests/sliding_sync/js/node_modules is missing (package-lock.json pins it).
HS_SS_TARGETS containing `synapse` runs the same against Synapse.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import nio
import pytest

from tests.node_script import NodeScript, npm_installed
from tests.sliding_sync.client import Target
from tests.sliding_sync.conftest import _targets, hs_target, synapse_target
from tests.sliding_sync.test_e2ee import ENCRYPTION, _nio

JS_DIR = Path(__file__).parent / "js"
STEP_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def node_modules() -> Path:
    return npm_installed(JS_DIR, "matrix-js-sdk")


@pytest.fixture(params=[t for t in ("hs", "synapse") if t == "hs" or "synapse" in _targets()])
async def js_target(request: pytest.FixtureRequest, make_server: Any) -> Target:
    if request.param == "synapse":
        return synapse_target(request.getfixturevalue("session_synapse"))
    return await hs_target(make_server, "unstable")


async def test_js_sdk_room_list_live_and_encrypted(js_target: Target, node_modules: Path, tmp_path: Path) -> None:
    target = js_target
    alice = await target.user("alice")
    bob = await target.user("bob")
    bob_nio, _ = await _nio(target, bob, tmp_path / "bob")
    node: NodeScript | None = None
    try:
        secret = await alice.create_room(name="js secret", invite=[bob.user_id], initial_state=[ENCRYPTION])
        await bob.call("POST", f"/join/{secret}", {})
        rooms = [await alice.create_room(name=f"js {i}") for i in (1, 2, 3)]
        for i, room in enumerate(rooms, start=1):
            await alice.send_message(room, f"m{i}")
        await alice.send_message(rooms[0], "bump 1")
        expected_order = [rooms[0], rooms[2], rooms[1], secret]

        config = {"base_url": target.base_url, "user_id": alice.user_id, "access_token": alice.token,
                  "device_id": alice.device_id, "expect_rooms": 4, "crypto": True, "timeout_ms": 60000,
                  # Short long-polls: the server stops after the test without waiting out a 10 s poll.
                  "poll_ms": 3000}
        env = dict(os.environ)
        if target.ca_path:
            env["NODE_EXTRA_CA_CERTS"] = target.ca_path
        proc = await asyncio.create_subprocess_exec(
            "node", str(JS_DIR / "room_list.mjs"), json.dumps(config), cwd=JS_DIR, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        node = NodeScript(proc, b"@@ss ", "js-sdk", STEP_TIMEOUT_S)

        ready = await node.next("ready")
        assert ready["count"] == 4
        assert ready["order"] == expected_order
        by_room = ready["rooms"]
        assert [by_room[r]["name"] for r in expected_order] == ["js 1", "js 3", "js 2", "js secret"]
        assert [by_room[r]["last"] for r in rooms] == ["bump 1", "m2", "m3"]
        assert by_room["__crypto"]["device_keys"] is True

        # A plain message arrives in the SDK's live timeline.
        await alice.send_message(rooms[1], "live from alice's other device")
        msg = await node.next("message")
        assert (msg["room_id"], msg["body"], msg["encrypted"]) == (rooms[1], "live from alice's other device", False)

        # bob's nio device encrypts for alice's js-sdk device: the SDK decrypts it.
        synced = await bob_nio.sync(timeout=0, full_state=True)
        assert isinstance(synced, nio.SyncResponse), synced
        sent = await bob_nio.room_send(secret, "m.room.message", {"msgtype": "m.text", "body": "encrypted hello"},
                                       ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        msg = await node.next("message")
        assert (msg["room_id"], msg["sender"], msg["body"], msg["encrypted"]) == (
            secret, bob.user_id, "encrypted hello", True)
    finally:
        if node is not None:
            await node.stop()
        await bob_nio.close()
