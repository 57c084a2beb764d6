"""The cluster's federation senders under faults, against a real Synapse through nginx's TLS port:

- the sender owning Synapse's destination killed (-9) during traffic and restarted 5 s later;
- Synapse itself down for a minute while the cluster keeps sending messages, to-device messages and
  a device-list change (a Synapse of the test's own: the session's stays up for the other tests);
- a third sender added and the senders restarted one at a time during steady traffic, the leases
  sampled every 100 ms.

Each ends with Synapse holding every event exactly once (its user's /messages, paged to the create
event, compared by event ID and body). One cluster for the module; the test that changes the cluster
file (adding fed_sender3) runs last.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.federation import cluster_conftest_helpers as fixtures
from tests.federation.cluster_flows import (
    LeaseSampler,
    Traffic,
    acknowledged_at,
    assert_exactly_once,
    encrypted_to_device,
    first_seen,
    interleaved_senders,
    lease_owner,
    rendezvous_owner,
    send_encrypted_to_device,
    send_retrying,
    shared_rooms,
    synapse_received,
    wait_delivered,
)
from tests.federation.cluster_hs import SENDERS, FederatingCluster
from tests.federation.synapse import SynapseServer
from tests.federation.test_e2ee import (
    changed,
    ok,
    query_until,
    second_device,
    signed_device_keys,
    sync_until,
    without_unsigned,
)
from tests.federation.test_rooms import wait_for_event

pytestmark = pytest.mark.timeout(300)
cluster_redis = fixtures.cluster_redis
fed_cluster = fixtures.fed_cluster
own_synapse = fixtures.own_synapse

# How long everything sent may take to reach Synapse once the fault is over.
DELIVERY_S = 30.0


async def test_killed_sender_restarted_loses_and_duplicates_nothing(fed_cluster: FederatingCluster,
                                                                   synapse: SynapseServer) -> None:
    """kill -9 of the sender owning Synapse's destination while a client sends 10 messages/s into two
    rooms shared with Synapse; restarted 5 s later. Synapse gets every event once, and the first event
    sent after the restart reaches it (Synapse acknowledges a transaction carrying it) within (the
    restart's duration + 2 s) of the restart. (Synapse then shows it to its user a few seconds later
    still: it processes the ~70 caught-up PDUs before it, one at a time.)"""
    began = time.time()
    alice, bob, rooms = await shared_rooms(fed_cluster, synapse, n=2)
    destination = synapse.server_name
    # Something went to Synapse already (the joins' answers do not count): the destination has an owner.
    warm = await alice.send_message(rooms[0], "warm up")
    await wait_for_event(bob, rooms[0], lambda e: e.get("event_id") == warm, timeout=DELIVERY_S)
    owner = await lease_owner(fed_cluster, destination)
    assert owner in fed_cluster.federation_sender_instances, owner

    traffic = Traffic(alice, rooms, per_second=10).start()
    await asyncio.sleep(2)
    await fed_cluster.kill_instance(owner)
    killed_at = len(traffic.sent)
    await asyncio.sleep(5)
    restart_began = time.monotonic()
    took = await fed_cluster.start_instance(owner)
    restarted = time.monotonic()
    # The first event acknowledged after the restart: how soon does Synapse have it?
    while not any(s.acked_at > restarted for s in traffic.sent):
        await asyncio.sleep(0.02)
    probe = next(s for s in traffic.sent if s.acked_at > restarted)
    arrived = await acknowledged_at(fed_cluster, destination, probe.event_id, timeout=took + 20)
    visible = await first_seen(bob, probe.room_id, probe.event_id, timeout=DELIVERY_S)
    await asyncio.sleep(2)
    sent = await traffic.stop()
    assert len(sent) - killed_at >= 40, f"only {len(sent) - killed_at} sends after the kill: the client stalled"
    for room_id in rooms:
        expected = [s for s in sent if s.room_id == room_id]
        messages = await wait_delivered(bob, room_id, expected, DELIVERY_S, fed_cluster, synapse)
        assert_exactly_once(messages, expected)
    received = synapse_received(synapse.log_path.read_text(errors="replace"), fed_cluster.server_name, began)
    assert len(received) >= 10 and not interleaved_senders(received), (len(received), interleaved_senders(received))
    assert arrived - restart_began <= took + 2.0, (
        f"an event sent after the restart ({probe.event_id}, acknowledged {probe.acked_at - restart_began:.2f}s "
        f"after the restart began at {time.time() - (time.monotonic() - restart_began):.3f}) reached Synapse "
        f"{arrived - restart_began:.2f}s after the restart began (its user saw it after "
        f"{visible - restart_began:.2f}s); the restart took {took:.2f}s")


async def test_synapse_down_for_a_minute_gets_everything_once(fed_cluster: FederatingCluster,
                                                              own_synapse: SynapseServer) -> None:
    """Synapse stopped for 60 s while the cluster's user keeps sending messages (2/s), encrypted-style
    to-device messages to the Synapse user's device, and logs in a new device (a device-list change).
    Once Synapse is back (and its user speaks, which ends the cluster's backoff for it), it has every
    message once, every to-device message once, and the new device."""
    syn = own_synapse
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, syn)
    alice.device_id = (await ok(alice, "GET", "/account/whoami"))["device_id"]
    bob.device_id = (await ok(bob, "GET", "/account/whoami"))["device_id"]
    assert alice.user_id and bob.user_id and bob.device_id
    await ok(alice, "POST", "/keys/upload", {"device_keys": signed_device_keys(alice)})
    await ok(bob, "POST", "/keys/upload", {"device_keys": signed_device_keys(bob)})
    await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})  # Synapse tracks alice's devices
    _, bob_since = await sync_until(bob, lambda b: True)

    await asyncio.to_thread(syn.stop)
    down_at = time.monotonic()
    traffic = Traffic(alice, [room_id], per_second=2).start()
    markers = []
    for i in range(3):
        markers.append(f"olm-while-down-{i}-{bob_since[-6:]}")
        await send_encrypted_to_device(alice, bob.user_id, bob.device_id, markers[-1])
        await asyncio.sleep(5)
    alice2 = await second_device(fed_cluster, alice)
    alice2_keys = signed_device_keys(alice2)
    await ok(alice2, "POST", "/keys/upload", {"device_keys": alice2_keys})
    await asyncio.sleep(max(0.0, down_at + 60 - time.monotonic()))
    sent = await traffic.stop()
    await asyncio.to_thread(syn.start)

    await send_retrying(bob, room_id, "synapse is back")
    messages = await wait_delivered(bob, room_id, sent, DELIVERY_S, fed_cluster, syn)
    assert_exactly_once(messages, sent)

    # The to-device messages, each once, and the device-list change, from bob's /sync.
    got: Counter[str] = Counter()
    device_change = False
    deadline = time.monotonic() + DELIVERY_S
    since = bob_since
    while time.monotonic() < deadline and not (set(markers) <= set(got) and device_change):
        body = await ok(bob, "GET", "/sync", since=since, timeout="1000")
        since = body["next_batch"]
        for marker in markers:
            got[marker] += len(encrypted_to_device(body, marker))
        device_change = device_change or changed(alice.user_id)(body)
    for _ in range(2):  # a duplicate arriving a little later
        body = await ok(bob, "GET", "/sync", since=since, timeout="500")
        since = body["next_batch"]
        for marker in markers:
            got[marker] += len(encrypted_to_device(body, marker))
    assert {m: got[m] for m in markers} == dict.fromkeys(markers, 1), (got, fed_cluster.log_tail(60))
    assert device_change, f"{bob.user_id}'s /sync never named {alice.user_id} in device_lists.changed"
    q = await query_until(bob, alice.user_id, lambda q: alice2.device_id in q["device_keys"].get(alice.user_id, {}))
    assert without_unsigned(q["device_keys"][alice.user_id][alice2.device_id]) == alice2_keys


async def test_third_sender_and_rolling_restart_keep_one_owner(fed_cluster: FederatingCluster,
                                                                synapse: SynapseServer) -> None:
    """A third sender added to the cluster file and started, then each sender restarted in turn, during
    traffic of 2 messages/s. Nothing lost or duplicated on Synapse; at every 100 ms sample Synapse's
    destination has at most one owner with an unexpired lease; Synapse never got transactions from two
    sending processes interleaved; afterwards the destination's owner is the rendezvous choice among
    the three, which is the new sender (so the destination did move)."""
    began = time.time()
    alice, bob, rooms = await shared_rooms(fed_cluster, synapse, n=2)
    destination = synapse.server_name
    # The new sender is the rendezvous choice for Synapse's destination, so the destination moves to it
    # (`fed_sender3` when that name wins; Synapse's port, so its server name, changes from run to run).
    # When the two senders' hashes for it are both high few names win: look through many.
    third = next(name for name in ("fed_sender3", *(f"fed_sender3_{n}" for n in range(100_000)))
                 if rendezvous_owner([*SENDERS, name], destination) == name)
    warm = await alice.send_message(rooms[0], "warm up")
    await wait_for_event(bob, rooms[0], lambda e: e.get("event_id") == warm, timeout=DELIVERY_S)
    before = await lease_owner(fed_cluster, destination)
    sampler = await LeaseSampler(fed_cluster.dsn).start()
    traffic = Traffic(alice, rooms, per_second=2).start()
    try:
        await asyncio.sleep(2)
        fed_cluster.add_worker(third, federation_sender=True)
        await fed_cluster.start_instance(third)
        for name in (*SENDERS, third):
            await asyncio.sleep(2)
            await fed_cluster.restart_instance(name)
        await asyncio.sleep(3)
    finally:
        sent = await traffic.stop()
    try:
        for room_id in rooms:
            expected = [s for s in sent if s.room_id == room_id]
            messages = await wait_delivered(bob, room_id, expected, DELIVERY_S, fed_cluster, synapse)
            assert_exactly_once(messages, expected)
        chosen = rendezvous_owner(fed_cluster.federation_sender_instances, destination)
        # A message after the restarts: whoever sends it holds the lease by then.
        last = await alice.send_message(rooms[0], "after the rolling restart")
        await wait_for_event(bob, rooms[0], lambda e: e.get("event_id") == last, timeout=DELIVERY_S)
        owner = await lease_owner(fed_cluster, destination)
    finally:
        await sampler.stop()
    transitions = sampler.transitions(destination)
    assert not sampler.double_owned(destination), transitions
    assert chosen == third and before in SENDERS, (chosen, third, before)
    assert owner == chosen, (owner, chosen, transitions)
    # One sender at a time, as Synapse saw it: each sending process's transactions in one stretch.
    received = synapse_received(synapse.log_path.read_text(errors="replace"), fed_cluster.server_name, began)
    assert len(received) >= 10, f"only {len(received)} transactions from the cluster in Synapse's log"
    assert not interleaved_senders(received), (interleaved_senders(received), transitions)
    assert len(sampler.samples) > 100, len(sampler.samples)
