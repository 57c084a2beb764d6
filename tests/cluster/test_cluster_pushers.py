"""Two pusher instances (`pusher_instances`) share the users between them, as Synapse's do: every
notification reaches the gateway exactly once, and each instance delivers its own users'."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hs.config import load_config
from hs.localcluster import LocalCluster
from hs.roles.duties import pusher_instance_for
from tests.cluster.conftest import running_cluster
from tests.harness import Client, ok
from tests.integration.test_pushers import FakeGateway, pusher_body
from tests.services import free_port

pytestmark = pytest.mark.timeout(300)
PUSHERS = ["pusher1", "pusher2"]


@pytest.fixture(scope="module")
def two_pusher_cluster(pg_base_dsn: str, redis_url: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The reference cluster plus two pusher workers (main pushes nothing)."""
    def add_pushers(cfg: dict[str, Any]) -> None:
        for worker in PUSHERS:
            listener = {"port": free_port(), "resources": ["replication"]}
            cfg["workers"][worker] = {"app": "pusher", "listeners": [listener]}
        cfg["pusher_instances"] = PUSHERS

    with running_cluster(pg_base_dsn, redis_url, tmp_path_factory.mktemp("pushers"), add_pushers) as c:
        yield c


async def test_each_notification_reaches_the_gateway_once(two_pusher_cluster: LocalCluster) -> None:
    cluster = two_pusher_cluster
    config = load_config(cluster.config_path)
    gateway = FakeGateway()
    await gateway.start()
    alice = Client(cluster.base_url)
    receivers: list[Client] = []
    try:
        await alice.register("alice" + uuid.uuid4().hex[:6])
        room = await alice.create_room(preset="public_chat")
        # Receivers until each pusher instance has two of them.
        shards: dict[str | None, int] = {}
        while min(shards.get(p, 0) for p in PUSHERS) < 2:
            c = Client(cluster.base_url)
            receivers.append(c)
            await c.register("rcv" + uuid.uuid4().hex[:8])
            assert c.user_id is not None
            shard = pusher_instance_for(config, c.user_id)
            shards[shard] = shards.get(shard, 0) + 1
            await ok(c, "POST", f"/join/{room}")
            await ok(c, "POST", "/pushers/set", pusher_body(gateway.url, pushkey=f"key-{c.user_id}"))
        assert set(shards) == set(PUSHERS)

        event_id = await alice.send_message(room, "to everyone's phone")
        received = await gateway.wait_for(len(receivers), timeout=30)
        await asyncio.sleep(1.5)  # any second delivery would arrive by now
        pushkeys = sorted(d["pushkey"] for r in gateway.received for d in r["notification"]["devices"])
        assert pushkeys == sorted(f"key-{c.user_id}" for c in receivers)
        assert {r["notification"]["event_id"] for r in received} == {event_id}
    finally:
        await alice.close()
        for c in receivers:
            await c.close()
        await gateway.stop()
