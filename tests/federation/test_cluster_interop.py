"""The worker cluster federating with a real Synapse, everything through nginx's TLS port: the
harness (tests/federation/cluster_hs.py: nginx's TLS, Synapse reaching the cluster by name, instance
controls), rooms joined both ways, messages both ways in each side's /sync, typing, read receipts,
encrypted-style to-device messages and device-list updates both ways, leaving, and each origin's
/send reaching one federation reader.

One cluster for the module (tests/federation/cluster_conftest_helpers.py `fed_cluster`), the
session's Synapse; tests keep apart by unique user names.
"""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import quote

import pytest

from hs.config import load_config
from tests.federation import cluster_conftest_helpers as fixtures
from tests.federation.client import TlsClient, unique, user
from tests.federation.cluster_flows import (
    encrypted_to_device,
    join_remote,
    membership_of,
    message,
    send_encrypted_to_device,
    send_upstreams,
    shared_rooms,
    sync_sees,
)
from tests.federation.cluster_hs import READERS, FederatingCluster
from tests.federation.fake_remote import FakeRemote
from tests.federation.synapse import SynapseServer
from tests.federation.test_e2ee import (
    changed,
    e2ee_user,
    ok,
    query_until,
    second_device,
    signed_device_keys,
    sync_until,
    without_unsigned,
)
from tests.federation.test_edus import SyncWatcher, put_typing, read_by, typing_users
from tests.federation.test_rooms import wait_for_event, wait_joined
from tests.federation.tls import TestCA

pytestmark = pytest.mark.timeout(300)
cluster_redis = fixtures.cluster_redis
fed_cluster = fixtures.fed_cluster


async def send(client: TlsClient, room_id: str, body: str) -> str:
    return await client.send_message(room_id, body)


async def test_federation_endpoints_answer_through_nginx_tls(fed_cluster: FederatingCluster,
                                                            synapse: SynapseServer) -> None:
    """nginx serves TLS for `localhost` from the test CA and routes federation requests; Synapse
    reaches the cluster by its server name (a profile query goes over federation)."""
    c = fed_cluster.client()
    status, version = await c.request("GET", "/_matrix/federation/v1/version")
    assert status == 200 and version["server"]["name"] == "hs", version
    status, keys = await c.request("GET", "/_matrix/key/v2/server")
    assert status == 200 and keys["server_name"] == fed_cluster.server_name, keys
    assert keys["verify_keys"] and fed_cluster.server_name in keys["signatures"]

    alice = await user(fed_cluster, unique("alice"))
    await ok(alice, "PUT", f"/profile/{quote(str(alice.user_id))}/displayname", {"displayname": "Alice of the cluster"})
    bob = await user(synapse, unique("bob"))
    profile = await ok(bob, "GET", f"/profile/{quote(str(alice.user_id))}")
    assert profile.get("displayname") == "Alice of the cluster", profile
    # Synapse's query came through nginx's TLS port (it verified the test CA's certificate for localhost),
    # and the access log names the instance that answered.
    lines = [ln for ln in fed_cluster.access_log() if "/_matrix/federation/v1/query/profile" in ln]
    assert lines and "upstream=127.0.0.1:" in lines[-1], lines


async def test_synapse_user_joins_cluster_room_and_messages_flow_both_ways(
        fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()

    from_alice = await send(alice, room_id, "hello from the cluster")
    seen = await sync_sees(bob_sync, room_id, message("hello from the cluster"), "alice's message")
    assert seen["event_id"] == from_alice
    from_bob = await send(bob, room_id, "hello from synapse")
    seen = await sync_sees(alice_sync, room_id, message("hello from synapse"), "bob's message")
    assert seen["event_id"] == from_bob


async def test_cluster_user_joins_synapse_room_by_alias(fed_cluster: FederatingCluster,
                                                         synapse: SynapseServer) -> None:
    alice = await user(fed_cluster, unique("alice"))
    bob = await user(synapse, unique("bob"))
    alias_name = unique("synroom")
    room_id = await bob.create_room(preset="public_chat", name="synapse room", room_alias_name=alias_name)
    joined = await join_remote(alice, f"#{alias_name}:{synapse.server_name}", synapse, fed_cluster)
    assert joined == room_id
    await wait_joined(bob, room_id, str(alice.user_id), timeout=30)
    status, name = await alice.request("GET", f"/rooms/{room_id}/state/m.room.name")
    assert status == 200 and name["name"] == "synapse room", name

    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()
    from_bob = await send(bob, room_id, "from the room's home")
    seen = await sync_sees(alice_sync, room_id, message("from the room's home"), "bob's message")
    assert seen["event_id"] == from_bob
    from_alice = await send(alice, room_id, "from the cluster joiner")
    seen = await sync_sees(bob_sync, room_id, message("from the cluster joiner"), "alice's message")
    assert seen["event_id"] == from_alice


async def test_typing_both_ways(fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()

    await put_typing(alice, room_id, True)
    await bob_sync.wait(lambda b: alice.user_id in (typing_users(b, room_id) or ()), f"{alice.user_id} typing")
    await put_typing(alice, room_id, False)
    await bob_sync.wait(lambda b: typing_users(b, room_id) == [], f"{alice.user_id} stop typing")

    await put_typing(bob, room_id, True)
    await alice_sync.wait(lambda b: bob.user_id in (typing_users(b, room_id) or ()), f"{bob.user_id} typing")
    await put_typing(bob, room_id, False)
    await alice_sync.wait(lambda b: typing_users(b, room_id) == [], f"{bob.user_id} stop typing")


async def test_read_receipts_both_ways(fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()

    from_alice = await send(alice, room_id, "read me, bob")
    await wait_for_event(bob, room_id, lambda e: e.get("event_id") == from_alice, timeout=30)
    await ok(bob, "POST", f"/rooms/{room_id}/receipt/m.read/{quote(from_alice)}", {})
    await alice_sync.wait(lambda b: read_by(b, room_id, from_alice, bob.user_id),
                          f"{bob.user_id}'s receipt for {from_alice}")

    from_bob = await send(bob, room_id, "read me, alice")
    await wait_for_event(alice, room_id, lambda e: e.get("event_id") == from_bob, timeout=30)
    await ok(alice, "POST", f"/rooms/{room_id}/receipt/m.read/{quote(from_bob)}", {})
    await bob_sync.wait(lambda b: read_by(b, room_id, from_bob, alice.user_id),
                        f"{alice.user_id}'s receipt for {from_bob}")


async def test_encrypted_to_device_both_ways(fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    alice = await e2ee_user(fed_cluster, "alice")
    bob = await e2ee_user(synapse, "bob")
    assert alice.user_id and bob.user_id and alice.device_id and bob.device_id
    for c in (alice, bob):
        await ok(c, "GET", "/sync", timeout="0")

    marker = unique("olm-to-bob")
    await send_encrypted_to_device(alice, bob.user_id, bob.device_id, marker)
    body, _ = await sync_until(bob, lambda b: bool(encrypted_to_device(b, marker)))
    (event,) = encrypted_to_device(body, marker)
    assert event["sender"] == alice.user_id and event["content"]["algorithm"] == "m.olm.v1.curve25519-aes-sha2"

    marker = unique("olm-to-alice")
    await send_encrypted_to_device(bob, alice.user_id, alice.device_id, marker)
    body, _ = await sync_until(alice, lambda b: bool(encrypted_to_device(b, marker)))
    (event,) = encrypted_to_device(body, marker)
    assert event["sender"] == bob.user_id


async def test_device_list_updates_both_ways(fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    alice = await e2ee_user(fed_cluster, "alice")
    bob = await e2ee_user(synapse, "bob")
    await ok(alice, "POST", "/keys/upload", {"device_keys": signed_device_keys(alice)})
    await ok(bob, "POST", "/keys/upload", {"device_keys": signed_device_keys(bob)})
    room_id = await alice.create_room(preset="public_chat")
    await join_remote(bob, room_id, fed_cluster, synapse)
    await wait_joined(alice, room_id, str(bob.user_id), timeout=30)
    # Each side looks at the other's keys once (so the other server tracks the user's devices).
    await ok(bob, "POST", "/keys/query", {"device_keys": {alice.user_id: []}})
    await ok(alice, "POST", "/keys/query", {"device_keys": {bob.user_id: []}})
    _, alice_since = await sync_until(alice, lambda b: True)
    _, bob_since = await sync_until(bob, lambda b: True)

    # A new device of the cluster's user reaches Synapse's user.
    alice2 = await second_device(fed_cluster, alice)
    alice2_keys = signed_device_keys(alice2)
    await ok(alice2, "POST", "/keys/upload", {"device_keys": alice2_keys})
    await sync_until(bob, changed(alice.user_id), since=bob_since)
    q = await query_until(bob, str(alice.user_id),
                          lambda q: alice2.device_id in q["device_keys"].get(alice.user_id, {}))
    assert without_unsigned(q["device_keys"][alice.user_id][alice2.device_id]) == alice2_keys

    # And Synapse's user's new device reaches the cluster's user.
    bob2 = await second_device(synapse, bob)
    bob2_keys = signed_device_keys(bob2)
    await ok(bob2, "POST", "/keys/upload", {"device_keys": bob2_keys})
    await sync_until(alice, changed(bob.user_id), since=alice_since)
    q = await query_until(alice, str(bob.user_id), lambda q: bob2.device_id in q["device_keys"].get(bob.user_id, {}))
    assert without_unsigned(q["device_keys"][bob.user_id][bob2.device_id]) == bob2_keys


async def test_leaving_both_ways(fed_cluster: FederatingCluster, synapse: SynapseServer) -> None:
    """Synapse's user leaves a cluster room; the cluster's user leaves a Synapse room: each side sees
    the leave, and the leaver no longer gets the room's messages."""
    alice, bob, (cluster_room,) = await shared_rooms(fed_cluster, synapse)
    synapse_room = await bob.create_room(preset="public_chat", name="synapse side")
    await join_remote(alice, synapse_room, synapse, fed_cluster)
    await wait_joined(bob, synapse_room, str(alice.user_id), timeout=30)
    alice_sync = await SyncWatcher(alice, fed_cluster, synapse).start()
    bob_sync = await SyncWatcher(bob, fed_cluster, synapse).start()

    await ok(bob, "POST", f"/rooms/{cluster_room}/leave", {})
    await sync_sees(alice_sync, cluster_room, membership_of(bob.user_id, "leave"), "bob's leave")
    status, members = await alice.request("GET", f"/rooms/{cluster_room}/joined_members")
    assert status == 200 and bob.user_id not in members["joined"], members

    await ok(alice, "POST", f"/rooms/{synapse_room}/leave", {})
    await sync_sees(bob_sync, synapse_room, membership_of(alice.user_id, "leave"), "alice's leave")
    status, members = await bob.request("GET", f"/rooms/{synapse_room}/joined_members")
    assert status == 200 and alice.user_id not in members["joined"], members

    # Nothing more is sent to the server that left: a message after the leave stays on its side.
    await send(alice, cluster_room, "after bob left")
    await send(bob, synapse_room, "after alice left")
    marker = await send(bob, synapse_room, "marker")
    await sync_sees(bob_sync, synapse_room, lambda e: e.get("event_id") == marker, "the marker")
    status, page = await alice.request("GET", f"/rooms/{synapse_room}/messages", params={"dir": "b", "limit": "20"})
    bodies = [e.get("content", {}).get("body") for e in page.get("chunk", [])] if status == 200 else []
    assert "after alice left" not in bodies, bodies


async def test_send_of_each_origin_lands_on_one_reader(fed_cluster: FederatingCluster, synapse: SynapseServer,
                                                      federation_ca: TestCA, tmp_path: Path) -> None:
    """/send from two origins (Synapse, and a fake server) through nginx's TLS port: each origin's
    transactions all reach one federation reader (the route table hashes /send by the X-Matrix origin),
    per nginx's access log."""
    alice, bob, (room_id,) = await shared_rooms(fed_cluster, synapse)
    for i in range(3):
        await send(bob, room_id, f"from synapse {i}")
        await wait_for_event(alice, room_id, message(f"from synapse {i}"), timeout=30)
    fake = FakeRemote(federation_ca, tmp_path)
    await fake.start()
    try:
        for _ in range(3):
            status, answer = await fake.send_transaction(fed_cluster.server_name, [])
            assert status == 200 and answer == {"pdus": {}}, (status, answer)
    finally:
        await fake.stop()
    readers = {f"127.0.0.1:{listener.port}" for name in READERS
               for listener in fed_cluster.cluster.config.listeners_for(name) if "federation" in listener.resources}
    upstreams = send_upstreams(fed_cluster.access_log())
    for origin in (synapse.server_name, fake.server_name):
        assert origin in upstreams, upstreams
        assert len(upstreams[origin]) == 1 and upstreams[origin] <= readers, (origin, upstreams, readers)


async def test_instances_are_crashed_restarted_and_added(fed_cluster: FederatingCluster) -> None:
    """The harness's instance controls: kill_instance / start_instance / restart_instance by name, and
    a worker added to the cluster file (a third federation sender) that LocalCluster then knows and
    starts. Last in the module: it leaves a third sender in the cluster file (stopped, not listed)."""
    await fed_cluster.kill_instance("fed_reader1", signal.SIGKILL)
    assert not fed_cluster.is_running("fed_reader1")
    await fed_cluster.start_instance("fed_reader1")
    away = await fed_cluster.restart_instance("fed_reader2")
    assert fed_cluster.is_running("fed_reader1") and fed_cluster.is_running("fed_reader2") and away < 30
    status, _ = await fed_cluster.client().request("GET", "/_matrix/federation/v1/version")
    assert status == 200

    fed_cluster.add_worker("fed_sender3", federation_sender=True)
    on_disk = load_config(fed_cluster.config_path)
    assert on_disk.federation_sender_instances == ["fed_sender1", "fed_sender2", "fed_sender3"]
    assert on_disk.workers["fed_sender3"].app == "federation_sender"
    assert "fed_sender3" in on_disk.instance_map
    assert "fed_sender3" in fed_cluster.instances
    await fed_cluster.start_instance("fed_sender3")
    assert fed_cluster.is_running("fed_sender3")
    fed_cluster.set_federation_senders(["fed_sender1", "fed_sender2"])
    assert load_config(fed_cluster.config_path).federation_sender_instances == ["fed_sender1", "fed_sender2"]
    await fed_cluster.stop_instance("fed_sender3")
    assert "fed_sender3 of " in fed_cluster.instance_log("fed_sender3")  # its log, for failure reports
    assert "--- fed_sender3 " in fed_cluster.log_tail()
