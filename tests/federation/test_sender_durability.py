"""Outbound federation is durable: what another server is owed survives that server's outage and this
server's restart, is read back from the database (not kept in memory), and arrives once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from hs.server import HomeServer
from tests.federation.client import TlsClient, unique, user
from tests.federation.hs_server import FederatingHs
from tests.federation.test_e2ee import e2ee_user, has_to_device, ok, second_device, send_to_device, sync_until
from tests.federation.test_rooms import text, wait_for_event, wait_joined

# Retry quickly so the test need not wait for a long backoff (hs's default starts at 2 s).
FAST_RETRY = {"federation": {"destination_min_retry_interval": 200, "destination_max_retry_interval": 1000}}


def count_received(server: FederatingHs) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Every PDU the server is sent in a /send transaction, by event ID (re-sent ones count twice),
    and every EDU."""
    received: Counter[str] = Counter()
    edus: list[dict[str, Any]] = []
    handler = server.hs.federation_transactions
    real = handler.on_transaction

    async def counting(origin: str, txn_id: str, body: Any) -> Any:
        answer = await real(origin, txn_id, body)
        for pdu in body.get("pdus", []) if isinstance(body, dict) else []:
            event_id = pdu.get("event_id") or _event_id(server, pdu)
            received[event_id] += 1
        edus.extend(body.get("edus", []) if isinstance(body, dict) else [])
        return answer

    handler.on_transaction = counting  # type: ignore[method-assign]
    return received, edus


def _event_id(server: FederatingHs, pdu: Any) -> str:
    from hs.events.hashing import compute_event_id
    from hs.events.room_versions import KNOWN_ROOM_VERSIONS

    return compute_event_id(pdu, KNOWN_ROOM_VERSIONS["12"])


async def restart(server: FederatingHs) -> None:
    """Stop the server and start it again on the same database: a process restart, memory lost."""
    await server.stop()
    server.hs = HomeServer(server.config, "main", signing_key=server.hs.signing_key)
    await server.start()


async def messages(client: TlsClient, room_id: str) -> list[dict[str, Any]]:
    status, page = await client.request("GET", f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "200"})
    assert status == 200, page
    return [e for e in page["chunk"] if e["type"] == "m.room.message"]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_restart_here_while_the_other_server_is_down_loses_nothing(make_fed_hs: Any, engine: str) -> None:
    local = await make_fed_hs(engine, **FAST_RETRY)
    remote = await make_fed_hs()
    alice = await e2ee_user(local, "alice")
    bob = await e2ee_user(remote, "bob")
    bob_phone = await second_device(remote, bob)
    room_id = await alice.create_room(preset="public_chat")
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    assert bob.user_id
    await wait_joined(alice, room_id, bob.user_id)
    await ok(bob_phone, "GET", "/sync", timeout="0")
    before = [await alice.send_message(room_id, f"before {i}") for i in range(3)]
    await wait_for_event(bob, room_id, text("before 2"))

    await remote.stop()
    during = [await alice.send_message(room_id, f"during {i}") for i in range(30)]
    await send_to_device(alice, {bob.user_id: {bob_phone.device_id: {"marker": "while-down"}}})
    alice_laptop = await second_device(local, alice)  # a device list change for bob's server
    # Nothing of the backlog is held in memory: the destination reads what it is owed from the database.
    deadline = time.monotonic() + 10
    while True:
        status_of = local.hs.federation_sender.status().get(remote.server_name, {})
        if status_of.get("catching_up") and status_of.get("queued_pdus") == 0:
            break
        assert time.monotonic() < deadline, status_of
        await asyncio.sleep(0.1)

    await restart(local)  # whatever this process had in memory is gone
    remote.hs = HomeServer(remote.config, "main", signing_key=remote.hs.signing_key)
    received, edus = count_received(remote)
    await remote.start()
    # No request from the other server is needed: the backoff runs out and the backlog goes.
    deadline = time.monotonic() + 30
    while True:
        bodies = [e["content"]["body"] for e in await messages(bob, room_id)]
        if f"during {len(during) - 1}" in bodies:
            break
        assert time.monotonic() < deadline, f"the restarted server has {bodies[:5]}..."
        await asyncio.sleep(0.2)
    seen = await messages(bob, room_id)
    assert Counter(e["event_id"] for e in seen) == Counter(set(before) | set(during))
    # Sent once each after the restart; what it had before was not sent again.
    assert all(received[e] == 1 for e in during), {e: received[e] for e in during if received[e] != 1}
    assert not set(before) & set(received)
    # The durable EDUs arrived too: the to-device message, and the device list change.
    await sync_until(bob_phone, has_to_device("while-down"))
    updates = [e["content"] for e in edus if e.get("edu_type") == "m.device_list_update"]
    assert [u["device_id"] for u in updates] == [alice_laptop.device_id]
    assert [e["edu_type"] for e in edus].count("m.direct_to_device") == 1
    row = await local.hs.federation_outbox.store.get_destination(remote.server_name)
    assert row is not None and row.retry_interval == 0 and row.failure_ts is None
    assert await local.hs.federation_outbox.store.get_edus(remote.server_name, 10) == []


async def test_new_events_flow_live_after_catching_up(make_fed_hs: Any) -> None:
    """Once caught up, a destination is served from its live queue again, in order, promptly."""
    local = await make_fed_hs(**FAST_RETRY)
    remote = await make_fed_hs()
    alice = await user(local, unique("alice"))
    bob = await user(remote, unique("bob"))
    room_id = await alice.create_room(preset="public_chat")
    status, body = await bob.request("POST", f"/join/{room_id}", {}, params={"server_name": local.server_name})
    assert status == 200, body
    assert bob.user_id
    await wait_joined(alice, room_id, bob.user_id)
    await alice.send_message(room_id, "warm up")
    deadline = time.monotonic() + 10
    while local.hs.federation_sender.status().get(remote.server_name, {}).get("catching_up", True):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    latencies = []
    for i in range(10):
        began = time.monotonic()
        await alice.send_message(room_id, f"live {i}")
        while f"live {i}" not in [e["content"]["body"] for e in await messages(bob, room_id)]:
            assert time.monotonic() - began < 10
            await asyncio.sleep(0.01)
        latencies.append(time.monotonic() - began)
    bodies = [e["content"]["body"] for e in reversed(await messages(bob, room_id))]
    assert [b for b in bodies if b.startswith("live")] == [f"live {i}" for i in range(10)]
    # A live send reaches the other server within a poll of it (~10-60 ms here); 2 s is far off.
    assert max(latencies) < 2.0, latencies
