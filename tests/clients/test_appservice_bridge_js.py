"""A small bridge built with matrix-appservice-bridge (npm), the framework of the matrix.org Node bridges,
headless in Node against an in-process homeserver registered through `app_service_config_files`.

tests/clients/appservice_js/bridge.mjs is started by this test with the same registration file hs
loaded: its `Bridge` listens for transactions on a free port; its bot joins the room alice invites it
to (through the bridge's Intent) and receives alice's message (onEvent); then a puppet of the
namespace, `@js_puppet:test.local`, is registered lazily by its Intent, joins and sends a message that
alice receives through /sync. The script reports what happened as JSON lines on stdout.

matrix-appservice-bridge 10.3.3 is the newest release whose `engines` accepts Node 20 (11.x wants Node
22, 12.x Node 24). `npm ci` runs once when tests/clients/appservice_js/node_modules is missing
(package-lock.json pins it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import TestHomeServer, ok, user
from tests.node_script import NodeScript, npm_installed
from tests.services import free_port

JS_DIR = Path(__file__).parent / "appservice_js"
STEP_TIMEOUT_S = 20.0
AS_TOKEN = "js-bridge-as-token"
HS_TOKEN = "js-bridge-hs-token"
BOT = "@jsbot:test.local"
PUPPET = "@js_puppet:test.local"


@pytest.fixture(scope="session")
def bridge_node_modules() -> Path:
    return npm_installed(JS_DIR, "matrix-appservice-bridge")


def registration(tmp_path: Path, port: int) -> str:
    """One YAML file read by both sides: hs (app_service_config_files) and the bridge."""
    data = {"id": "js-bridge", "url": f"http://127.0.0.1:{port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
            "sender_localpart": "jsbot", "rate_limited": False,
            "namespaces": {"users": [{"regex": "@js_.*:test\\.local", "exclusive": True}],
                           "aliases": [], "rooms": []}}
    path = tmp_path / "js-bridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


async def test_js_bridge_bot_joins_receives_and_puppet_sends(
        make_server: Any, engine: str, tmp_path: Path, bridge_node_modules: Path) -> None:
    port = free_port()
    reg = registration(tmp_path, port)
    server: TestHomeServer = await make_server(engine, app_service_config_files=[reg])
    alice = await user(server, "alice")
    config = {"base_url": server.base_url, "domain": "test.local", "registration": reg, "port": port,
              "puppet": PUPPET, "expect_body": "hello js bridge", "timeout_ms": 25000}
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS_DIR / "bridge.mjs"), json.dumps(config), cwd=JS_DIR, env=dict(os.environ),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    node = NodeScript(proc, b"@@as ", "bridge", STEP_TIMEOUT_S)
    try:
        listening = await node.next("listening")
        assert listening["bot"] == BOT
        since = (await alice.sync())["next_batch"]

        # (1) alice invites the bot; its Intent joins; alice's message reaches the bridge's onEvent.
        room = await alice.create_room(preset="private_chat", name="js bridge", invite=[BOT])
        joined = await node.next("joined")
        assert joined["room_id"] == room
        members = await ok(alice, "GET", f"/rooms/{room}/joined_members")
        assert BOT in members["joined"]
        sent_id = await alice.send_message(room, "hello js bridge")

        # (2) the puppet registers itself, joins and sends; (3) the script reports and exits.
        done = await node.next("done")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert done["invites"] == [{"room_id": room, "sender": alice.user_id}]
        assert done["bot_joined"] == room
        assert {"sender": alice.user_id, "body": "hello js bridge", "event_id": sent_id} in done["received"]
        puppet = done["puppet"]
        assert puppet["user_id"] == PUPPET and puppet["whoami"] == PUPPET
        assert puppet["event_id"].startswith("$")
        assert puppet["profile"] == {"displayname": "js_puppet"}  # as registration leaves it

        # alice gets the puppet's message through /sync, from the puppet.
        deadline = time.monotonic() + 10
        events: list[dict[str, Any]] = []
        while not any(e["event_id"] == puppet["event_id"] for e in events):
            assert time.monotonic() < deadline, f"the puppet's message never reached alice: {events}"
            data = await alice.sync(since, timeout=2000)
            since = data["next_batch"]
            events += data.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        message = next(e for e in events if e["event_id"] == puppet["event_id"])
        assert message["sender"] == PUPPET and message["type"] == "m.room.message"
        assert message["content"]["body"] == "hello from the js puppet"
        members = await ok(alice, "GET", f"/rooms/{room}/joined_members")
        assert {BOT, PUPPET, alice.user_id} <= set(members["joined"])
        # The puppet is a real account now (registered through m.login.application_service).
        status, _ = await alice.request("GET", f"/profile/{PUPPET}")
        assert status == 200
    finally:
        await node.stop()
