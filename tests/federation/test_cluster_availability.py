"""Availability of the federating cluster while one of its processes is down, against a real Synapse
through nginx's TLS port: the federation reader that takes Synapse's /send is killed, and Synapse's
messages keep arriving (nginx moves its transactions to the other reader, whose advisory lock still
keeps them one at a time); a federation sender is killed, and local sends keep their latency, their
events waiting in the database for the sender's restart."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.federation import cluster_conftest_helpers as fixtures
from tests.federation.cluster_flows import message, send_upstreams, shared_rooms, sync_sees
from tests.federation.cluster_hs import READERS, FederatingCluster
from tests.federation.synapse import SynapseServer
from tests.federation.test_edus import SyncWatcher

pytestmark = pytest.mark.timeout(300)
cluster_redis = fixtures.cluster_redis
fed_cluster = fixtures.fed_cluster


def _reader_of(cluster: FederatingCluster, origin: str) -> str:
    """The federation reader nginx sent `origin`'s /send requests to."""
    ports = {f"127.0.0.1:{listener.port}": name for name in READERS
             for listener in cluster.cluster.config.listeners_for(name) if "federation" in listener.resources}
    upstreams = send_upstreams(cluster.access_log()).get(origin, set())
    assert len(upstreams) == 1 and next(iter(upstreams)) in ports, (origin, upstreams, ports)
    return ports[next(iter(upstreams))]


async def test_a_killed_reader_leaves_synapse_traffic_flowing(fed_cluster: FederatingCluster,
                                                              synapse: SynapseServer) -> None:
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    await bob.send_message(room_id, "before")
    await sync_sees(alice_sync, room_id, message("before"), "bob's first message")
    reader = _reader_of(fed_cluster, synapse.server_name)
    await fed_cluster.kill_instance(reader)
    try:
        latencies = []
        for i in range(5):
            began = time.monotonic()
            await bob.send_message(room_id, f"while {reader} is down {i}")
            await sync_sees(alice_sync, room_id, message(f"while {reader} is down {i}"), f"message {i}", )
            latencies.append(time.monotonic() - began)
        # Synapse retries a failed transaction after its own backoff; nginx's next try goes to the other
        # reader at once, so each message arrives in about a second here (bound: 15 s).
        assert max(latencies) < 15, latencies
    finally:
        await fed_cluster.start_instance(reader)


async def test_a_killed_sender_does_not_slow_local_sends(fed_cluster: FederatingCluster,
                                                          synapse: SynapseServer) -> None:
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    own_room = await alice.create_room(preset="private_chat")
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()
    await alice.send_message(room_id, "warm up")
    await sync_sees(bob_sync, room_id, message("warm up"), "the first message")
    row = await fed_cluster.destination_row(synapse.server_name)
    assert row is not None and row["lease_owner"], row
    owner = str(row["lease_owner"])
    await fed_cluster.kill_instance(owner)
    latencies = []
    try:
        for i in range(10):
            for room in (room_id, own_room):
                began = time.monotonic()
                await alice.send_message(room, f"sender down {i}")
                latencies.append(time.monotonic() - began)
    finally:
        restarted = time.monotonic()
        await fed_cluster.start_instance(owner)
    latencies.sort()
    # Sending does not wait for the federation sender (here each send takes ~10-50 ms; bound 1 s).
    assert latencies[-1] < 1.0, f"slowest {latencies[-1]:.3f} s, median {latencies[len(latencies) // 2]:.3f} s"
    # What it missed goes out once it is back, from the database.
    await sync_sees(bob_sync, room_id, message("sender down 9"), "the last message sent while the sender was down")
    assert time.monotonic() - restarted < 30


async def test_senders_export_their_queues_as_metrics(fed_cluster: FederatingCluster,
                                                      synapse: SynapseServer) -> None:
    """The operator's view: each federation sender's metrics listener shows its destinations by state,
    its queues and its transactions."""
    import aiohttp

    alice, _bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    await alice.send_message(room_id, "counted")
    row = await fed_cluster.destination_row(synapse.server_name)
    assert row is not None and row["lease_owner"], row
    owner = str(row["lease_owner"])
    port = next(listener.port for listener in fed_cluster.cluster.config.listeners_for(owner)
                if listener.type == "metrics" or "metrics" in listener.resources)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            sent = [ln for ln in text.splitlines() if ln.startswith('hs_federation_transactions_sent_total{outcome="sent"}')]
            live = [ln for ln in text.splitlines() if ln.startswith('hs_federation_destinations{state="live"}')]
            if sent and float(sent[0].split()[-1]) > 0 and live and float(live[0].split()[-1]) >= 1:
                break
            assert time.monotonic() < deadline, [ln for ln in text.splitlines() if "hs_federation" in ln]
            await asyncio.sleep(1)
    for name in ("hs_federation_queued_pdus", "hs_federation_oldest_unsent_seconds", "hs_federation_stream_lag",
                 "hs_federation_backoffs_total", "hs_federation_pdus_sent_total"):
        assert f"\n{name}" in text, name
