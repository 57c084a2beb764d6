"""Application service transactions in a real cluster (issue 16): the background worker sends them
(`notify_appservices_from_worker`), clients send through nginx, and a fake service on a real port
records every transaction. The service is down for 30 s while messages flow; the sending worker is
killed with SIGKILL while messages flow; it is stopped cleanly and started again. Each time every event
reaches the service exactly once after it drops repeated transaction IDs (as the spec asks of
services), in the room's order, and the senders' requests keep succeeding meanwhile.

The backoff is the real one (2^n s from 2 s), so the outage test waits for the retry that follows the
service's return: up to ~32 s after a 30 s outage. The numbers measured are printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiohttp import web

from hs.localcluster import LocalCluster, free_port
from tests.cluster.conftest import running_cluster
from tests.harness import Client, ok

pytestmark = pytest.mark.timeout(300)

Json = dict[str, Any]
HS_TOKEN = "cluster-bridge-hs-token"
AS_TOKEN = "cluster-bridge-as-token"
SENDING_INSTANCE = "background_worker"


class RecordingService:
    """An application service answering PUT /_matrix/app/v1/transactions/{txnId}: it takes a
    transaction once (a repeated ID is acknowledged and counted, not processed again) and records when
    each event first arrived. `status` other than 200 refuses transactions (an outage); `delay_s` holds
    each answer back (a transaction is then in flight for a while: taken, not yet acknowledged)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.status = 200
        self.delay_s = 0.0
        self.attempts: list[tuple[float, str, int]] = []  # (monotonic time, txn ID, status answered)
        self.bodies: dict[str, Json] = {}  # txn ID -> body, for the transactions taken
        self.repeats: list[str] = []  # IDs received again after being taken
        self.repeat_bodies_differ: list[str] = []
        self.events: list[Json] = []  # events of the transactions taken, in arrival order (deduplicated)
        self.arrived: dict[str, float] = {}  # event ID -> monotonic time it first arrived
        self.bad_auth = 0
        self.in_flight = 0  # transactions taken and not yet answered
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._txn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _txn(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn"]
        if request.headers.get("Authorization") != f"Bearer {HS_TOKEN}":
            self.bad_auth += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        body = await request.json()
        status = self.status
        self.attempts.append((time.monotonic(), txn_id, status))
        if status != 200:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "down"}, status=status)
        if txn_id in self.bodies:
            self.repeats.append(txn_id)
            if _event_ids(self.bodies[txn_id]) != _event_ids(body):  # `age` in unsigned changes
                self.repeat_bodies_differ.append(txn_id)
        else:
            self.bodies[txn_id] = body
            now = time.monotonic()
            for event in body.get("events", []):
                self.events.append(event)
                self.arrived.setdefault(event["event_id"], now)
        if self.delay_s:
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
        return web.json_response({})

    def room_messages(self, room_id: str) -> list[str]:
        """IDs of the room's messages taken, in arrival order."""
        return [e["event_id"] for e in self.events if e["room_id"] == room_id and e["type"] == "m.room.message"]


def _event_ids(body: Json) -> list[str]:
    return [e["event_id"] for e in body.get("events", [])]


@pytest.fixture(scope="module")
def service_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def as_cluster(pg_base_dsn: str, redis_url: str, service_port: int,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The reference cluster with one application service, whose transactions the background worker
    sends."""
    workdir = tmp_path_factory.mktemp("appservice")
    registration = workdir / "bridge.yaml"
    registration.write_text(yaml.safe_dump({
        "id": "bridge", "url": f"http://127.0.0.1:{service_port}", "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
        "sender_localpart": "bridgebot", "rate_limited": False,
        "namespaces": {"users": [{"regex": "@irc_.*:cluster\\.test", "exclusive": False}],
                       "aliases": [], "rooms": []}}))

    def adjust(cfg: dict[str, Any]) -> None:
        cfg["app_service_config_files"] = [str(Path(registration).resolve())]
        cfg["notify_appservices_from_worker"] = SENDING_INSTANCE

    with running_cluster(pg_base_dsn, redis_url, workdir, adjust) as c:
        yield c


async def until(check: Any, timeout: float, what: str, state: Any = None) -> float:
    """Wait for `check()`; returns the monotonic time it became true. On a timeout, `state()` (if given)
    says what there was instead."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}" + (f": {state()}" if state else ""),
                        pytrace=False)
        await asyncio.sleep(0.05)
    return time.monotonic()


class Room:
    """A room of two talkers with a user of the bridge's namespace joined (so the service is in it)."""

    def __init__(self, base_url: str) -> None:
        self.alice = Client(base_url)
        self.bob = Client(base_url)
        self.puppet = Client(base_url)
        self.room_id = ""
        self.sent: list[tuple[str, str, float, float]] = []  # (sender, event ID, sent at, latency s)
        self.failures: list[tuple[int, Any]] = []

    async def setup(self) -> None:
        tag = uuid.uuid4().hex[:6]
        await self.alice.register(f"alice{tag}")
        await self.bob.register(f"bob{tag}")
        await self.puppet.register(f"irc_puppet{tag}")
        self.room_id = await self.alice.create_room(preset="public_chat")
        for c in (self.bob, self.puppet):
            await ok(c, "POST", f"/join/{self.room_id}", {})

    async def close(self) -> None:
        for c in (self.alice, self.bob, self.puppet):
            await c.close()

    async def talk(self, client: Client, stop: asyncio.Event, pause_s: float) -> None:
        """Messages from `client`, one after another, until `stop`; every answer is recorded."""
        n = 0
        while not stop.is_set():
            began = time.monotonic()
            status, data = await client.request(
                "PUT", f"/rooms/{self.room_id}/send/m.room.message/{uuid.uuid4().hex}",
                {"msgtype": "m.text", "body": f"{client.user_id} {n}"})
            took = time.monotonic() - began
            if status == 200:
                self.sent.append((client.user_id or "", data["event_id"], began, took))
            else:
                self.failures.append((status, data))
            n += 1
            await asyncio.sleep(pause_s)

    def start_talking(self, stop: asyncio.Event, pause_s: float) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.talk(c, stop, pause_s)) for c in (self.alice, self.bob)]

    async def stream_order(self, cluster: LocalCluster) -> list[str]:
        """The room's messages in stream order, the order transactions follow (read from the database:
        /messages pages in topological order, which concurrent sends to a room can make differ)."""
        conn = await asyncpg.connect(cluster.config.database.postgres_dsn)
        try:
            rows = await conn.fetch("SELECT event_id FROM events WHERE room_id = $1 AND type = 'm.room.message'"
                                    " ORDER BY stream_ordering", self.room_id)
        finally:
            await conn.close()
        return [r["event_id"] for r in rows]


def check_delivery(service: RecordingService, room: Room, server_order: list[str]) -> None:
    """Every event acknowledged to a sender reached the service once, in the room's order. (Problems
    are reported in a line each: pytest's rendering of lists of hundreds of IDs helps nobody.)"""
    problems: list[str] = []
    if room.failures:
        problems.append(f"{len(room.failures)} sends failed, first {room.failures[:3]}")
    delivered = service.room_messages(room.room_id)
    if len(delivered) != len(set(delivered)):
        problems.append(f"{len(delivered) - len(set(delivered))} events arrived in two different transactions")
    sent_ids = [e for _u, e, _t, _l in room.sent]
    missing, unexpected = set(sent_ids) - set(delivered), set(delivered) - set(sent_ids)
    if missing or unexpected:
        problems.append(f"{len(missing)} of {len(sent_ids)} sent events missing, {len(unexpected)} unexpected")
    if delivered != server_order:
        at = next((i for i, (a, b) in enumerate(zip(delivered, server_order, strict=False)) if a != b),
                  min(len(delivered), len(server_order)))
        problems.append(f"not the room's stream order from position {at} ({len(delivered)} delivered,"
                        f" {len(server_order)} in the room)")
    for who in {u for u, _e, _t, _l in room.sent}:
        mine = [e for u, e, _t, _l in room.sent if u == who]
        if [e for e in delivered if e in set(mine)] != mine:
            problems.append(f"{who}'s messages out of send order")
    if service.repeat_bodies_differ:
        problems.append(f"transaction IDs re-sent with other events: {service.repeat_bodies_differ}")
    if service.bad_auth:
        problems.append(f"{service.bad_auth} transactions without the hs_token")
    ids = [int(t) for t in service.bodies]
    if ids != sorted(ids):
        problems.append(f"transaction IDs taken out of order: {ids}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def progress(service: RecordingService, room: Room) -> str:
    """What the service has had of the room so far (for a wait that timed out)."""
    sent = {e for _u, e, _t, _l in room.sent}
    now = time.monotonic()
    last = [(round(t - now, 1), txn, status) for t, txn, status in service.attempts[-5:]]
    return (f"{len(sent - set(service.room_messages(room.room_id)))} of {len(sent)} sent events missing;"
            f" {len(service.attempts)} attempts, the last (s ago, txn, status) {last}; repeats {service.repeats}")


def latencies(room: Room, since: float, until_t: float) -> tuple[int, float, float]:
    """(count, p50 ms, max ms) of the sends begun in [since, until_t]."""
    window = [lat for _u, _e, t, lat in room.sent if since <= t <= until_t]
    assert window, "no sends in the window"
    return len(window), statistics.median(window) * 1000, max(window) * 1000


async def caught_up(service: RecordingService, room: Room) -> None:
    """The service has had everything up to the room's last event (a join: nothing in flight)."""
    await until(lambda: any(e["room_id"] == room.room_id and e["type"] == "m.room.member"
                            and e["state_key"] == room.puppet.user_id for e in service.events),
                30, "the puppet's join to reach the service", lambda: progress(service, room))


async def test_service_down_30s_while_messages_flow(as_cluster: LocalCluster, service_port: int) -> None:
    service = RecordingService(service_port)
    await service.start()
    room = Room(as_cluster.base_url)
    try:
        await room.setup()
        await caught_up(service, room)
        service.status = 503
        down_at = time.monotonic()
        stop = asyncio.Event()
        talkers = room.start_talking(stop, 0.25)
        # Down for 30 s from its first refusal, and a little more: the retry due then (2+4+8+16 s after
        # it) is refused too, and the backlog waits for the next one, 32 s later (the real backoff).
        first_refusal = await until(lambda: bool(service.attempts), 10, "a first attempt")
        await asyncio.sleep(first_refusal + 30.5 - time.monotonic())
        service.status = 200
        up_at = time.monotonic()
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*talkers)
        sent_ids = {e for _u, e, _t, _l in room.sent}
        await until(lambda: sent_ids <= set(service.room_messages(room.room_id)), 70, "the backlog after the outage",
                    lambda: progress(service, room))
        done_at = max(service.arrived[e] for e in sent_ids)
        await asyncio.sleep(1)  # a late duplicate would arrive by now
        check_delivery(service, room, await room.stream_order(as_cluster))
        refused = [round(t - down_at, 1) for t, _id, s in service.attempts if s != 200]
        backlog_at = min(service.arrived[e] for e in sent_ids)
        n, p50, worst = latencies(room, down_at, up_at)
        print(f"\n[appservice outage] {len(sent_ids)} messages from 2 users during the"
              f" {up_at - down_at:.1f} s outage + 1 s;"
              f" refused attempts at {refused} s; backlog arrived {backlog_at - up_at:.1f} s after the service"
              f" came back, complete {done_at - up_at:.1f} s after, in {len(service.bodies)} transactions"
              f" (largest {max(len(b['events']) for b in service.bodies.values())} events); repeats"
              f" {len(service.repeats)}; sends during the outage: {n}, all 200, p50 {p50:.0f} ms,"
              f" max {worst:.0f} ms")
        assert backlog_at - up_at < 70
        assert len(refused) >= 3  # it retried, backing off
        assert max(len(b["events"]) for b in service.bodies.values()) <= 100
    finally:
        await room.close()
        await service.stop()


async def test_sending_worker_killed_while_messages_flow(as_cluster: LocalCluster, service_port: int) -> None:
    service = RecordingService(service_port)
    service.delay_s = 0.2  # a transaction is in flight most of the time: the kill likely cuts one
    await service.start()
    room = Room(as_cluster.base_url)
    try:
        await room.setup()
        await caught_up(service, room)
        stop = asyncio.Event()
        talkers = room.start_talking(stop, 0.05)
        await asyncio.sleep(3)
        kill_at = time.monotonic()
        await asyncio.to_thread(as_cluster.kill_instance, SENDING_INSTANCE)
        await asyncio.sleep(2)
        spawned_at = time.monotonic()
        await asyncio.to_thread(as_cluster.start_instance, SENDING_INSTANCE)
        restarted_at = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*talkers)
        before_restart = {e for _u, e, t, lat in room.sent if t + lat <= spawned_at}
        sent_ids = {e for _u, e, _t, _l in room.sent}
        await until(lambda: sent_ids <= set(service.room_messages(room.room_id)), 60, "every event",
                    lambda: progress(service, room))
        caught_at = max(service.arrived[e] for e in before_restart)
        resumed_at = min(t for t in service.arrived.values() if t >= spawned_at)
        backlog = len([e for e in before_restart if service.arrived[e] >= spawned_at])
        assert caught_at - spawned_at < 30, "the restarted instance was slow to catch up"
        await asyncio.sleep(1)
        check_delivery(service, room, await room.stream_order(as_cluster))
        # One transaction in flight at a time: the kill can cut one, re-sent with its ID after the restart.
        assert len(set(service.repeats)) <= 1
        n, p50, worst = latencies(room, kill_at, restarted_at)
        print(f"\n[appservice worker kill -9] {len(sent_ids)} messages; {SENDING_INSTANCE} away"
              f" {restarted_at - kill_at:.1f} s (kill to listening again; started in"
              f" {restarted_at - spawned_at:.1f} s); first transaction {resumed_at - spawned_at:.2f} s after the"
              f" start, the {backlog} events owed then all delivered {caught_at - spawned_at:.2f} s after it;"
              f" {len(service.bodies)} transactions,"
              f" repeated IDs {service.repeats} (same events each time); sends while it was away: {n}, all 200,"
              f" p50 {p50:.0f} ms, max {worst:.0f} ms")
    finally:
        await room.close()
        await service.stop()


async def test_sending_worker_stopped_cleanly_resumes_without_repeats(as_cluster: LocalCluster,
                                                                     service_port: int) -> None:
    service = RecordingService(service_port)
    service.delay_s = 0.2  # a transaction is in flight when the stop comes: it is finished, not cut
    await service.start()
    room = Room(as_cluster.base_url)
    try:
        await room.setup()
        await caught_up(service, room)
        stop = asyncio.Event()
        talkers = room.start_talking(stop, 0.05)
        await asyncio.sleep(2)
        stop_began = time.monotonic()
        in_flight_at_stop = service.in_flight
        took = await asyncio.to_thread(as_cluster.stop_instance, SENDING_INSTANCE)
        stopped_count = len(service.arrived)
        await asyncio.sleep(1.5)
        assert len(service.arrived) == stopped_count, "transactions sent by a stopped instance"
        spawned_at = time.monotonic()
        await asyncio.to_thread(as_cluster.start_instance, SENDING_INSTANCE)
        restarted_at = time.monotonic()
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*talkers)
        before_restart = {e for _u, e, t, lat in room.sent if t + lat <= spawned_at}
        sent_ids = {e for _u, e, _t, _l in room.sent}
        await until(lambda: sent_ids <= set(service.room_messages(room.room_id)), 60, "every event",
                    lambda: progress(service, room))
        caught_at = max(service.arrived[e] for e in before_restart)
        resumed_at = min(t for t in service.arrived.values() if t >= spawned_at)
        backlog = len([e for e in before_restart if service.arrived[e] >= spawned_at])
        assert caught_at - spawned_at < 30, "the restarted instance was slow to catch up"
        await asyncio.sleep(1)
        check_delivery(service, room, await room.stream_order(as_cluster))
        assert service.repeats == [], "a clean stop cut a transaction in flight: it was sent again"
        assert as_cluster.killed == [], "the stop timed out"
        n, p50, worst = latencies(room, stop_began, restarted_at)
        print(f"\n[appservice worker clean restart] {len(sent_ids)} messages; stop took {took:.2f} s"
              f" ({in_flight_at_stop} transaction in flight when it began); first"
              f" transaction {resumed_at - spawned_at:.2f} s after the start (listening after"
              f" {restarted_at - spawned_at:.1f} s), the {backlog} events owed then all delivered"
              f" {caught_at - spawned_at:.2f} s after it;"
              f" {len(service.bodies)} transactions, no repeats; sends while it was away: {n}, all 200,"
              f" p50 {p50:.0f} ms, max {worst:.0f} ms")
    finally:
        await room.close()
        await service.stop()
