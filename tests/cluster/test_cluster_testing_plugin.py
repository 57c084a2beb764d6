"""The `hs_cluster` fixture of the hs pytest plugin: a worker cluster (PostgreSQL and Redis from the
environment or started, nginx in front) that a bot's tests get by naming it; users registered by
`hs_user_factory` through nginx chat with matrix-nio while /sync and /send land on different workers."""

from __future__ import annotations

from typing import Any

import aiohttp
import nio


def nio_client(base_url: str, user: tuple[str, str, str]) -> nio.AsyncClient:
    user_id, token, device_id = user
    client = nio.AsyncClient(base_url, user_id, device_id=device_id)
    client.restore_login(user_id, device_id, token)
    return client


async def test_cluster_fixture_serves_a_chat(hs_cluster: Any, hs_user_factory: Any) -> None:
    assert set(hs_cluster.cluster.status()) >= {"main", "event_persister1", "sync1", "sync2"}
    assert all(pid is not None for pid in hs_cluster.cluster.status().values())
    alice = nio_client(hs_cluster.base_url, await hs_user_factory("alice", server=hs_cluster))
    bob = nio_client(hs_cluster.base_url, await hs_user_factory("bob", server=hs_cluster))
    try:
        assert alice.user_id == f"@alice:{hs_cluster.server_name}"
        created = await alice.room_create(name="Cluster", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        await bob.sync(timeout=0)
        assert isinstance(await bob.join(created.room_id), nio.JoinResponse)
        await bob.sync(timeout=0)
        sent = await alice.room_send(created.room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        assert isinstance(sent, nio.RoomSendResponse), sent
        got = await bob.sync(timeout=10000)
        assert isinstance(got, nio.SyncResponse), got
        assert [e.body for e in got.rooms.join[created.room_id].timeline.events
                if isinstance(e, nio.RoomMessageText)] == ["hi"]
        # Each instance answers directly too, at the URL the fixture gives.
        async with aiohttp.ClientSession() as http, http.get(
                hs_cluster.instance_url("sync2") + "/_matrix/client/versions") as resp:
            assert resp.status == 200
    finally:
        await alice.close()
        await bob.close()
