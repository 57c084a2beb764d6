"""Guest access changed over federation (issue 18): when an `m.room.guest_access` that is not
`can_join` arrives from another server, this server's guests leave the room, as they do after a local
change (the spec's Guest Access module: the server MUST set their membership to leave). Driven by the
fake remote server (tests/federation/fake_remote.py), whose user the room's creator made an admin;
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.federation.client import TlsClient, unique, user
from tests.federation.conftest import MakeFedHs
from tests.federation.fake_remote import q
from tests.federation.hs_server import FederatingHs
from tests.federation.test_inbound_safety import make_fake  # noqa: F401 - fixture
from tests.federation.test_rooms import wait_for_event


async def guest(local: FederatingHs) -> TlsClient:
    c = local.client()
    status, data = await c.request("POST", "/register", {}, params={"kind": "guest"}, auth=False)
    assert status == 200, data
    c.token, c.user_id = data["access_token"], data["user_id"]
    return c


async def membership(client: TlsClient, room_id: str, user_id: str) -> str | None:
    status, body = await client.request("GET", f"/rooms/{room_id}/state/m.room.member/{q(user_id)}")
    return str(body["membership"]) if status == 200 else None


async def wait_membership(client: TlsClient, room_id: str, user_id: str, wanted: str,
                          timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = await membership(client, room_id, user_id)
        if seen == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{user_id} is {seen!r} in {room_id}, not {wanted!r}")


async def test_guests_leave_when_a_remote_server_closes_guest_access(
        make_fed_hs: MakeFedHs, make_fake: Any, engine: str) -> None:  # noqa: F811 - fixture
    local = await make_fed_hs(engine, allow_guest_access=True)
    fake = await make_fake()
    mallory = fake.user_id("mallory")
    alice = await user(local, unique("alice"))
    room_id = await alice.create_room(
        preset="public_chat", name="guests welcome",
        initial_state=[{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}],
        power_level_content_override={"users": {mallory: 100}})
    visitor = await guest(local)
    status, body = await visitor.request("POST", f"/rooms/{room_id}/join", {})
    assert status == 200, body
    await fake.join(local.server_name, room_id, "mallory")
    await wait_for_event(alice, room_id, lambda e: e.get("state_key") == mallory
                         and e.get("content", {}).get("membership") == "join")

    # A change that still lets guests join keeps them.
    eid, pdu = fake.build(room_id, mallory, "m.room.guest_access", {"guest_access": "can_join"}, "")
    status, body = await fake.send_transaction(local.server_name, [pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body
    eid, pdu = fake.build(room_id, mallory, "m.room.guest_access", {"guest_access": "forbidden"}, "")
    status, body = await fake.send_transaction(local.server_name, [pdu])
    assert status == 200 and body["pdus"] == {eid: {}}, body

    await wait_membership(alice, room_id, visitor.user_id, "leave")
    status, state = await alice.request("GET", f"/rooms/{room_id}/state/m.room.guest_access")
    assert status == 200 and state == {"guest_access": "forbidden"}, state
    # The guest left by itself (as on Synapse), and cannot come back.
    left = await wait_for_event(alice, room_id, lambda e: e.get("state_key") == visitor.user_id
                                and e.get("content", {}).get("membership") == "leave")
    assert left["sender"] == visitor.user_id
    status, body = await visitor.request("POST", f"/rooms/{room_id}/join", {})
    assert status == 403, body
    # Alice, a full account, stays.
    assert await membership(alice, room_id, alice.user_id) == "join"
