"""The cluster behind nginx: users cannot tell it from a monolith; writes land on their writers."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest

from hs.localcluster import LocalCluster
from hs.streams.base import stable_shard
from tests.cluster.conftest import SECRET, instance_url
from tests.harness import Client

pytestmark = pytest.mark.timeout(300)


async def _user(base: str, name: str) -> Client:
    c = Client(base)
    await c.register(name + uuid.uuid4().hex[:6])
    return c


async def test_chat_through_the_proxy(cluster: LocalCluster) -> None:
    alice = await _user(cluster.base_url, "alice")
    bob = await _user(cluster.base_url, "bob")
    try:
        room = await alice.create_room(preset="private_chat", name="clustered", invite=[bob.user_id])
        first = await bob.sync()
        assert room in first["rooms"]["invite"]
        status, _ = await bob.request("POST", f"/join/{room}", {})
        assert status == 200
        since = (await bob.sync(first["next_batch"]))["next_batch"]
        poll = asyncio.create_task(bob.sync(since, timeout=10000))
        await asyncio.sleep(0.2)
        event_id = await alice.send_message(room, "hello from the cluster")
        result = await asyncio.wait_for(poll, 10)
        events = result["rooms"]["join"][room]["timeline"]["events"]
        assert event_id in [e["event_id"] for e in events]
        status, page = await alice.request("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
        assert status == 200 and event_id in [e["event_id"] for e in page["chunk"]]
        # The user directory (served by generic workers) finds the room's other member.
        assert bob.user_id is not None
        status, found = await alice.request("POST", "/user_directory/search",
                                            {"search_term": bob.user_id[1:].split(":")[0]})
        assert status == 200 and [r["user_id"] for r in found["results"]] == [bob.user_id]
    finally:
        await alice.close()
        await bob.close()


async def test_rooms_are_persisted_by_their_hashed_writer(cluster: LocalCluster) -> None:
    alice = await _user(cluster.base_url, "carol")
    writers = cluster.config.stream_writers.events
    try:
        # Room IDs are random (v12: the create event's hash); create rooms until both writers have
        # some (8 rooms all on one writer happened once in 128 runs).
        rooms: list[str] = []
        while len(rooms) < 8 or (len({stable_shard(r, len(writers)) for r in rooms}) < len(writers)
                                 and len(rooms) < 40):
            rooms.append(await alice.create_room(name=f"r{len(rooms)}"))
        for room in rooms:
            await alice.send_message(room, "x")
        conn = await asyncpg.connect(cluster.config.database.postgres_dsn)
        try:
            rows = await conn.fetch("SELECT room_id, instance_name FROM events WHERE room_id = ANY($1::text[])", rooms)
        finally:
            await conn.close()
        by_room: dict[str, set[str]] = {}
        for r in rows:
            by_room.setdefault(r["room_id"], set()).add(r["instance_name"])
        for room in rooms:
            assert by_room[room] == {writers[stable_shard(room, len(writers))]}
        assert {w for ws in by_room.values() for w in ws} == set(writers)
    finally:
        await alice.close()


async def test_sync_token_from_one_worker_is_exact_on_the_other(cluster: LocalCluster) -> None:
    """Interleave sends into rooms of both persisters; alternate /sync between the two sync workers."""
    sender = await _user(cluster.base_url, "dave")
    rooms = [await sender.create_room(name=f"t{i}") for i in range(4)]
    readers = [Client(instance_url(cluster, "sync1")), Client(instance_url(cluster, "sync2"))]
    for r in readers:
        r.token, r.user_id = sender.token, sender.user_id
    try:
        since = (await readers[0].sync())["next_batch"]
        sent: list[str] = []
        seen: list[str] = []

        async def send_all() -> None:
            for i in range(40):
                sent.append(await sender.send_message(rooms[i % 4], f"m{i}"))

        task = asyncio.create_task(send_all())
        i = 0
        while not task.done() or len(seen) < len(sent):
            # (The largest timeline a filter allows: a slow sync must not come back `limited`.)
            body = await readers[i % 2].sync(since, timeout=2000, filter='{"room": {"timeline": {"limit": 100}}}')
            i += 1
            since = body["next_batch"]
            for room in rooms:
                for e in body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", []):
                    if e["type"] == "m.room.message":
                        seen.append(e["event_id"])
            if i > 400:
                break
        await task
        assert len(seen) == len(set(seen)), "an event was repeated"
        assert set(seen) == set(sent), "an event was skipped"
    finally:
        await sender.close()
        for r in readers:
            await r.close()


async def test_replication_requires_the_secret(cluster: LocalCluster) -> None:
    url = instance_url(cluster, "event_persister1", "replication") + "/_hs/replication/positions"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 403
        async with s.get(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
        async with s.get(url, headers={"Authorization": f"Bearer {SECRET}"}) as r:
            assert r.status == 200
            assert (await r.json())["instance"] == "event_persister1"


async def test_worker_writes_other_streams_only_through_their_writer(cluster: LocalCluster) -> None:
    alice = await _user(cluster.base_url, "erin")
    try:
        room = await alice.create_room(name="typing")
        # Typing PUT sent straight to a sync worker is forwarded to the stream writer.
        direct = Client(instance_url(cluster, "sync1"))
        direct.token, direct.user_id = alice.token, alice.user_id
        status, body = await direct.request("PUT", f"/rooms/{room}/typing/{alice.user_id}",
                                            {"typing": True, "timeout": 30000})
        assert status == 200, body
        await direct.close()
        # The sync worker itself refuses to persist events of a room it does not write.
        url = instance_url(cluster, "sync1", "replication") + "/_hs/replication/send_event"
        async with aiohttp.ClientSession() as s, s.post(
            url, headers={"Authorization": f"Bearer {SECRET}"},
            json={"room_id": room, "sender": alice.user_id, "type": "m.room.message",
                  "content": {"body": "x"}}) as r:
            assert r.status == 400
        # And the event persister that does not own the room refuses too.
        owner = cluster.config.stream_writers.events[stable_shard(room, 2)]
        other = next(w for w in cluster.config.stream_writers.events if w != owner)
        url = instance_url(cluster, other, "replication") + "/_hs/replication/send_event"
        async with aiohttp.ClientSession() as s, s.post(
            url, headers={"Authorization": f"Bearer {SECRET}"},
            json={"room_id": room, "sender": alice.user_id, "type": "m.room.message",
                  "content": {"body": "x"}}) as r:
            assert r.status == 400
    finally:
        await alice.close()




async def test_logout_invalidates_cached_tokens_on_every_worker(cluster: LocalCluster) -> None:
    alice = await _user(cluster.base_url, "frank")
    direct = [Client(instance_url(cluster, w)) for w in ("sync1", "sync2")]
    try:
        for d in direct:
            d.token = alice.token
            status, _ = await d.request("GET", "/account/whoami")
            assert status == 200  # now cached on that worker
        status, _ = await alice.request("POST", "/logout", {})
        assert status == 200
        for d in direct:
            for _ in range(50):
                status, body = await d.request("GET", "/account/whoami")
                if status == 401:
                    break
                await asyncio.sleep(0.05)
            assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    finally:
        await alice.close()
        for d in direct:
            await d.close()


async def test_typing_reaches_members_syncing_on_other_workers(cluster: LocalCluster) -> None:
    """Typing lives in the stream writer's memory; sync workers learn it over replication."""
    alice = await _user(cluster.base_url, "gina")
    bob = await _user(cluster.base_url, "hank")
    readers = [Client(instance_url(cluster, w)) for w in ("sync1", "sync2")]
    try:
        room = await alice.create_room(preset="public_chat")
        assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200
        status, _ = await alice.request("PUT", f"/rooms/{room}/typing/{alice.user_id}",
                                        {"typing": True, "timeout": 20000})
        assert status == 200
        for r in readers:
            r.token, r.user_id = bob.token, bob.user_id
            body = await r.sync()
            typing = [e for e in body["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.typing"]
            assert typing and alice.user_id in typing[0]["content"]["user_ids"]
    finally:
        for c in (alice, bob, *readers):
            await c.close()


async def test_typing_survives_a_stream_writer_restart(cluster: LocalCluster) -> None:
    """The writer counts typing positions from 0 again after a restart; readers follow its new epoch."""
    alice = await _user(cluster.base_url, "ivan")
    bob = await _user(cluster.base_url, "judy")
    reader = Client(instance_url(cluster, "sync1"))
    try:
        room = await alice.create_room(preset="public_chat")
        assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200
        for _ in range(3):
            await alice.request("PUT", f"/rooms/{room}/typing/{alice.user_id}", {"typing": True, "timeout": 20000})
            await alice.request("PUT", f"/rooms/{room}/typing/{alice.user_id}", {"typing": False})
        await asyncio.to_thread(cluster.kill_instance, "stream_writer")
        await asyncio.to_thread(cluster.start_instance, "stream_writer")
        reader.token, reader.user_id = bob.token, bob.user_id
        since = (await reader.sync())["next_batch"]
        status, _ = await alice.request("PUT", f"/rooms/{room}/typing/{alice.user_id}",
                                        {"typing": True, "timeout": 20000})
        assert status == 200
        body = await reader.sync(since, timeout=5000)
        events = body.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", [])
        typing = [e for e in events if e["type"] == "m.typing"]
        assert typing and alice.user_id in typing[0]["content"]["user_ids"]
    finally:
        for c in (alice, bob, reader):
            await c.close()


async def test_unread_counts_on_a_sync_worker_follow_other_processes_writes(cluster: LocalCluster) -> None:
    """A sync worker caches unread counts; events persisted and receipts written by other processes
    must still show up in them (its cache drops what their messages say changed)."""
    alice = await _user(cluster.base_url, "alice")
    bob = await _user(cluster.base_url, "bob")
    reader = Client(instance_url(cluster, "sync1"))
    reader.token, reader.user_id = bob.token, bob.user_id
    try:
        room = await alice.create_room(preset="public_chat")
        assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200

        async def count_becomes(expected: int) -> None:
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                body = await reader.sync()
                entry = body["rooms"]["join"].get(room, {})
                count = entry.get("unread_notifications", {}).get("notification_count")
                if count == expected:
                    return
                assert asyncio.get_running_loop().time() < deadline, (count, expected)
                await asyncio.sleep(0.1)

        ids = [await alice.send_message(room, f"m{i}") for i in range(3)]
        await count_becomes(3)  # cached on sync1 from here
        ids.append(await alice.send_message(room, "one more"))
        await count_becomes(4)
        status, _ = await bob.request("POST", f"/rooms/{room}/receipt/m.read/{ids[2]}", {})
        assert status == 200
        await count_becomes(1)
        status, _ = await bob.request("POST", f"/rooms/{room}/receipt/m.read.private/{ids[3]}", {})
        assert status == 200
        await count_becomes(0)
    finally:
        await alice.close()
        await bob.close()
        await reader.close()


async def test_unread_summaries_stay_exact_when_receipts_race_messages_across_processes(
        cluster: LocalCluster) -> None:
    """Read receipts (recounted by the receipts writer) racing messages (counted by the event
    persisters, other processes): every stored unread summary equals a recount from the notifications.
    Without a lock both sides share, a recount that read the notifications before an increment
    committed overwrote the increment."""
    from hs.db.pool import _PgConnection
    from hs.db.stores.push import recompute_push_summary

    alice = await _user(cluster.base_url, "alice")
    bob = await _user(cluster.base_url, "bob")
    try:
        rooms = [await alice.create_room(preset="public_chat") for _ in range(4)]
        for room in rooms:
            assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200

        async def send(room: str, sent: list[str], worker: int) -> None:
            for i in range(30):
                sent.append(await alice.send_message(room, f"{worker}.{i}"))

        async def read(room: str, sent: list[str], sending: asyncio.Future[object]) -> None:
            while not sending.done():
                if sent:
                    status, _ = await bob.request("POST", f"/rooms/{room}/receipt/m.read/{sent[-1]}", {})
                    assert status == 200
                await asyncio.sleep(0.002)

        async def send_and_read(room: str) -> None:
            sent: list[str] = []
            sending = asyncio.ensure_future(asyncio.gather(*(send(room, sent, w) for w in range(3))))
            await asyncio.gather(sending, read(room, sent, sending))

        await asyncio.gather(*(send_and_read(room) for room in rooms))
        conn = await asyncpg.connect(cluster.config.database.postgres_dsn)
        try:
            for room in rooms:
                stored = await conn.fetchval(
                    "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1"
                    " AND room_id = $2", bob.user_id, room)
                recount = conn.transaction()
                await recount.start()
                await recompute_push_summary(_PgConnection(conn), bob.user_id, room)
                recounted = await conn.fetchval(
                    "SELECT COALESCE(SUM(notif_count), 0) FROM event_push_summary WHERE user_id = $1"
                    " AND room_id = $2", bob.user_id, room)
                await recount.rollback()
                assert stored == recounted, (room, stored, recounted)
        finally:
            await conn.close()
    finally:
        await alice.close()
        await bob.close()


async def test_push_notifications_reach_the_gateway_from_the_cluster(cluster: LocalCluster) -> None:
    """The pusher (on main) follows notifications the event persisters store."""
    from tests.integration.test_pushers import FakeGateway, pusher_body

    gateway = FakeGateway()
    await gateway.start()
    alice = await _user(cluster.base_url, "alice")
    bob = await _user(cluster.base_url, "bob")
    try:
        room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
        assert (await bob.request("POST", f"/join/{room}", {}))[0] == 200
        status, _ = await bob.request("POST", "/pushers/set", pusher_body(gateway.url))
        assert status == 200
        event_id = await alice.send_message(room, "pushed through the cluster")
        received = await gateway.wait_for(1)
        assert received[0]["notification"]["event_id"] == event_id
    finally:
        await alice.close()
        await bob.close()
        await gateway.stop()
