"""Sliding sync (MSC4186) through the cluster: a connection's state lives in the database, so its
consecutive requests may be served by different sync workers, and `hs routes` sends both sliding sync
endpoints to the sync workers the way it sends /sync.

The reference cluster (tests/cluster/conftest.py) has two generic workers with client listeners,
`sync1` and `sync2`; requests are sent to each directly and through nginx (which hashes a user's
requests onto one of them: a chain sync1 -> sync2 -> nginx -> sync1 -> nginx crosses workers through
nginx whichever one it picks).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest

from hs.localcluster import LocalCluster
from tests.cluster.conftest import instance_url
from tests.harness import Client, ok

pytestmark = pytest.mark.timeout(300)

UNSTABLE_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V4_PATH = "/_matrix/client/v4/sync"
SHAPES = ("unstable", "v4")
# How long a woken long-poll may take to answer, loosely (the figure is printed; it is ~10-50 ms).
WAKE_LIMIT_S = 2.0


class Sliding:
    """One user's sliding sync requests, in either shape, to any base URL (a worker or nginx)."""

    def __init__(self, session: aiohttp.ClientSession, token: str, shape: str, conn_id: str) -> None:
        self.session, self.token, self.shape, self.conn_id = session, token, shape, conn_id

    def body(self, timeline_limit: int, pos: str | None, timeout: int) -> dict[str, Any]:
        if self.shape == "unstable":
            rlist: dict[str, Any] = {"ranges": [[0, 19]], "timeline_limit": timeline_limit,
                                     "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]]}
            return {"conn_id": self.conn_id, "lists": {"all": rlist}}
        rlist = {"range": [0, 19], "timeline_limit": timeline_limit,
                 "required_state": {"include": [["m.room.name", ""]], "lazy_members": True}}
        body: dict[str, Any] = {"conn_id": self.conn_id, "lists": {"all": rlist}, "timeout": timeout}
        if pos is not None:
            body["pos"] = pos
        return body

    async def request(self, base: str, pos: str | None = None, timeout: int = 0,
                      timeline_limit: int = 5) -> tuple[int, Any]:
        params: dict[str, str] = {}
        if self.shape == "unstable":
            params["timeout"] = str(timeout)
            if pos is not None:
                params["pos"] = pos
        path = UNSTABLE_PATH if self.shape == "unstable" else V4_PATH
        async with self.session.post(base + path, params=params, json=self.body(timeline_limit, pos, timeout),
                                     headers={"Authorization": f"Bearer {self.token}"}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def slide(self, base: str, pos: str | None = None, timeout: int = 0) -> dict[str, Any]:
        status, data = await self.request(base, pos, timeout)
        assert status == 200, (base, pos, status, data)
        assert isinstance(data.get("pos"), str) and data["pos"], data
        return data  # type: ignore[no-any-return]


def timeline_ids(room: dict[str, Any]) -> list[str]:
    events = room.get("timeline", room.get("timeline_events", []))
    return [e["event_id"] for e in events]


async def _users(cluster: LocalCluster, *names: str) -> list[Client]:
    out = []
    for name in names:
        c = Client(cluster.base_url)
        await c.register(name + uuid.uuid4().hex[:6])
        out.append(c)
    return out


async def _until_room(s: Sliding, base: str, pos: str, room_id: str, event_id: str) -> dict[str, Any]:
    """The next response on `base` that carries `event_id` in `room_id` (a long-poll: a sync worker
    may learn of the event a moment after the send answered); it must be the first non-empty one."""
    data = await s.slide(base, pos, timeout=10000)
    rooms = data.get("rooms", {})
    assert event_id in timeline_ids(rooms.get(room_id, {})), (base, data)
    return data


# -- routing -----------------------------------------------------------------------------------------


def _nginx_upstream_for(conf: str, path: str) -> set[str]:
    """The servers nginx sends `path` to: the first regex location matching it (the order nginx uses,
    as the rendered config lists the most specific first), then that upstream's `server` lines."""
    for rx, upstream in re.findall(r'location ~ "([^"]+)" \{ proxy_pass http://([^;/]+);', conf):
        if re.search(rx, path):
            block = re.search(r"upstream " + re.escape(upstream) + r" \{(.*?)\}", conf, re.S)
            assert block is not None, upstream
            return set(re.findall(r"server (\S+?)[; ]", block.group(1)))
    raise AssertionError(f"no nginx location for {path}")


def test_both_sliding_sync_paths_are_routed_like_sync(cluster: LocalCluster) -> None:
    conf = (cluster.workdir / "nginx.conf").read_text()
    sync_workers = {instance_url(cluster, name).removeprefix("http://") for name in ("sync1", "sync2")}
    assert _nginx_upstream_for(conf, "/_matrix/client/v3/sync") == sync_workers
    assert _nginx_upstream_for(conf, UNSTABLE_PATH) == sync_workers
    assert _nginx_upstream_for(conf, V4_PATH) == sync_workers


# -- one connection across workers ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_consecutive_requests_on_different_workers(cluster: LocalCluster, shape: str) -> None:
    (alice,) = await _users(cluster, "ssalice")
    sync1, sync2, proxy = instance_url(cluster, "sync1"), instance_url(cluster, "sync2"), cluster.base_url
    try:
        rooms = [await alice.create_room(name=f"ss room {i}") for i in range(3)]
        for room in rooms:
            await alice.send_message(room, "before")
        async with aiohttp.ClientSession() as session:
            assert alice.token is not None
            s = Sliding(session, alice.token, shape, "conn-" + uuid.uuid4().hex[:6])
            first = await s.slide(sync1)
            assert set(first["rooms"]) == set(rooms)
            assert all(first["rooms"][r].get("initial") is True for r in rooms), first["rooms"]
            pos = first["pos"]
            # Each hop: a message in one room, then the next request of the connection elsewhere
            # carries that room alone, incrementally, with only the new event.
            for i, base in enumerate((sync2, proxy, sync1, proxy, sync2)):
                room = rooms[i % len(rooms)]
                event_id = await alice.send_message(room, f"hop {i}")
                data = await _until_room(s, base, pos, room, event_id)
                assert set(data["rooms"]) == {room}, (base, data["rooms"])
                entry = data["rooms"][room]
                assert not entry.get("initial"), (base, entry)
                assert timeline_ids(entry) == [event_id], (base, entry)
                assert data["pos"] != pos
                pos = data["pos"]
            # Nothing new: an immediate answer on either worker has no rooms.
            for base in (sync1, sync2):
                quiet = await s.slide(base, pos, timeout=0)
                assert not quiet.get("rooms"), (base, quiet)
    finally:
        await alice.close()


@pytest.mark.parametrize("shape", SHAPES)
async def test_unknown_pos_on_every_worker(cluster: LocalCluster, shape: str) -> None:
    alice, mallory = await _users(cluster, "ssunk", "ssmal")
    try:
        await alice.create_room(name="unknown pos")
        async with aiohttp.ClientSession() as session:
            assert alice.token is not None and mallory.token is not None
            conn_id = "conn-" + uuid.uuid4().hex[:6]
            s = Sliding(session, alice.token, shape, conn_id)
            real = (await s.slide(instance_url(cluster, "sync1")))["pos"]
            stranger = Sliding(session, mallory.token, shape, conn_id)
            for base in (instance_url(cluster, "sync1"), instance_url(cluster, "sync2"), cluster.base_url):
                for pos in ("999999999", "not-a-pos"):
                    status, data = await s.request(base, pos)
                    assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), (base, pos, status, data)
                # Another user's position (same conn_id) is unknown to them.
                status, data = await stranger.request(base, real)
                assert (status, data.get("errcode")) == (400, "M_UNKNOWN_POS"), (base, status, data)
                # The real one still works everywhere.
                assert (await s.request(base, real))[0] == 200
    finally:
        await alice.close()
        await mallory.close()


@pytest.mark.parametrize("shape", SHAPES)
async def test_long_poll_on_one_worker_woken_by_a_send_through_the_other(cluster: LocalCluster, shape: str) -> None:
    alice, bob = await _users(cluster, "sswake", "sswakeb")
    sync1, sync2 = instance_url(cluster, "sync1"), instance_url(cluster, "sync2")
    bob_on_sync1 = Client(sync1)
    bob_on_sync1.token, bob_on_sync1.user_id = bob.token, bob.user_id
    try:
        room = await alice.create_room(name="wake", invite=[bob.user_id])
        await ok(bob, "POST", f"/join/{room}", {})
        async with aiohttp.ClientSession() as session:
            assert alice.token is not None
            s = Sliding(session, alice.token, shape, "conn-" + uuid.uuid4().hex[:6])
            pos = (await s.slide(sync2))["pos"]
            latencies = []
            for trial in range(3):
                # Catch up (bob's join, the previous trial's echo) until a request comes back empty.
                while (caught := await s.slide(sync2, pos, timeout=0)).get("rooms"):
                    pos = caught["pos"]
                pos = caught["pos"]
                poll = asyncio.create_task(s.slide(sync2, pos, timeout=20000))
                await asyncio.sleep(0.3)
                assert not poll.done(), "the long-poll answered before anything happened"
                began = time.perf_counter()
                event_id = await bob_on_sync1.send_message(room, f"wake {trial}")
                data = await asyncio.wait_for(poll, 10)
                latencies.append(time.perf_counter() - began)
                assert event_id in timeline_ids(data.get("rooms", {}).get(room, {})), data
                pos = data["pos"]
            print(f"sliding sync ({shape}) long-poll on sync2 woken by a send through sync1: "
                  + ", ".join(f"{x * 1000:.0f} ms" for x in latencies))
            assert max(latencies) < WAKE_LIMIT_S, latencies
    finally:
        await alice.close()
        await bob.close()
        await bob_on_sync1.close()


# -- a sync worker dies (last in the module: sync2 is restarted at the end) ------------------------------


async def test_a_sync_worker_killed_under_a_long_poll_loses_nothing(cluster: LocalCluster) -> None:
    """kill -9 of the worker holding a connection's long-poll: the client asks again with the same
    `pos` on the other sync worker and gets what was sent meanwhile (the connection's state is in the
    database, not in the dead process); the time from the kill to that answer is printed."""
    (alice,) = await _users(cluster, "sskill")
    sync1, sync2 = instance_url(cluster, "sync1"), instance_url(cluster, "sync2")
    try:
        room = await alice.create_room(name="kill")
        await alice.send_message(room, "before")
        async with aiohttp.ClientSession() as session:
            assert alice.token is not None
            s = Sliding(session, alice.token, "unstable", "conn-" + uuid.uuid4().hex[:6])
            pos = (await s.slide(sync2))["pos"]
            poll = asyncio.create_task(s.request(sync2, pos, timeout=20000))
            await asyncio.sleep(0.3)
            assert not poll.done(), "the long-poll answered before anything happened"
            killed_at = time.perf_counter()
            await asyncio.to_thread(cluster.kill_instance, "sync2")
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(poll, 10)
            event_id = await alice.send_message(room, "while sync2 is dead")
            data = await _until_room(s, sync1, pos, room, event_id)
            recovered = time.perf_counter() - killed_at
            assert timeline_ids(data["rooms"][room]) == [event_id], data  # nothing lost, nothing repeated
            # The connection goes on from there, on the surviving worker.
            later = await alice.send_message(room, "after")
            data = await _until_room(s, sync1, data["pos"], room, later)
            print(f"sliding sync: sync2 killed under a long-poll; the same pos answered on sync1 "
                  f"{recovered * 1000:.0f} ms after the kill (message sent in between)")
            assert recovered < 5.0, recovered
    finally:
        await alice.close()
        await asyncio.to_thread(cluster.start_instance, "sync2")
