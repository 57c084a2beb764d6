"""Room creation in the cluster: the room's persister builds and persists all of a new room's events in
one transaction (handed over in one replication call), so a refused event leaves no room, and one
user's concurrent identical createRoom requests, spread over the workers, all get rooms of their own."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from hs.localcluster import LocalCluster
from tests.harness import Client

pytestmark = pytest.mark.timeout(300)


async def _rooms_of(cluster: LocalCluster, creator: str) -> list[str]:
    conn = await asyncpg.connect(cluster.config.database.postgres_dsn)
    try:
        rows = await conn.fetch("SELECT room_id FROM rooms WHERE creator = $1", creator)
        events = await conn.fetchval(
            "SELECT COUNT(*) FROM events e JOIN rooms r USING (room_id) WHERE r.creator = $1", creator)
    finally:
        await conn.close()
    rooms = [r["room_id"] for r in rows]
    assert (events == 0) == (not rooms)
    return rooms


async def test_concurrent_identical_creations_and_refused_ones(cluster: LocalCluster) -> None:
    bot, bob = Client(cluster.base_url), Client(cluster.base_url)
    await bot.register("bot" + uuid.uuid4().hex[:6])
    await bob.register("bob" + uuid.uuid4().hex[:6])
    try:
        # Refused by the persister while building (v12 levels must be integers): no room anywhere.
        status, body = await bot.request("POST", "/createRoom", {
            "name": "refused", "invite": [bob.user_id], "power_level_content_override": {"ban": "50"}})
        assert (status, body["errcode"]) == (400, "M_INVALID_ROOM_STATE")
        assert bot.user_id is not None
        assert await _rooms_of(cluster, bot.user_id) == []

        request = {"preset": "private_chat", "name": "same", "invite": [bob.user_id],
                   "initial_state": [{"type": "m.custom", "content": {"x": 1}}]}
        answers = await asyncio.gather(*(bot.request("POST", "/createRoom", request) for _ in range(16)))
        assert [status for status, _ in answers] == [200] * 16, answers
        room_ids = {body["room_id"] for _, body in answers}
        assert len(room_ids) == 16
        assert sorted(await _rooms_of(cluster, bot.user_id)) == sorted(room_ids)
        for room_id in room_ids:
            status, state = await bot.request("GET", f"/rooms/{room_id}/state")
            assert status == 200, state
            by_key = {(e["type"], e["state_key"]): e["content"] for e in state}
            assert by_key[("m.room.name", "")] == {"name": "same"}
            assert by_key[("m.custom", "")] == {"x": 1}
            assert by_key[("m.room.member", bob.user_id)]["membership"] == "invite"
    finally:
        await bot.close()
        await bob.close()
