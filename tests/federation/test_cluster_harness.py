"""The federating-cluster harness itself (tests/federation/cluster_hs.py): the cluster starts behind
nginx serving TLS on its server name's port, its federation endpoints answer there, Synapse reaches it
by that name, and instances can be crashed, restarted and added (a third federation sender from a
rewritten cluster file)."""

from __future__ import annotations

import signal
from urllib.parse import quote

import pytest

from hs.config import load_config
from tests.federation import cluster_conftest_helpers as fixtures
from tests.federation.client import unique, user
from tests.federation.cluster_hs import FederatingCluster
from tests.federation.synapse import SynapseServer
from tests.federation.test_e2ee import ok

pytestmark = pytest.mark.timeout(300)
cluster_redis = fixtures.cluster_redis
fed_cluster = fixtures.fed_cluster


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


async def test_instances_are_crashed_restarted_and_added(fed_cluster: FederatingCluster) -> None:
    """kill_instance / start_instance / restart_instance by name, and a worker added to the cluster
    file (a third federation sender) that LocalCluster then knows and starts."""
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
