"""Federation readers: a cluster whose inbound federation is taken by two generic workers serving the
`federation` resource (behind nginx, /send hashed by the X-Matrix origin), with rooms on two event
persisters and the ephemeral streams on one writer. Other servers are fake ones the test controls
(tests/federation/fake_remote.py): they join the cluster's rooms over make_join/send_join and send
signed transactions, through nginx or straight to one reader.

What must hold: a remote user joins rooms of either persister; PDUs sent through any reader are
persisted by the room's persister and reach a local user's /sync; to-device, typing and receipt EDUs
reach the local user; one origin's transactions all go to one reader (and different origins use both);
one origin's transactions are processed one at a time even when sent to two readers at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from hs.events.event import JsonDict
from hs.events.room_versions import KNOWN_ROOM_VERSIONS
from hs.federation.xmatrix import sign_request
from hs.localcluster import LocalCluster
from hs.streams.base import stable_shard
from tests.cluster.conftest import running_cluster
from tests.federation.fake_remote import FakeRemote, FakeRoom, q
from tests.federation.tls import TestCA
from tests.harness import Client
from tests.services import free_port

pytestmark = pytest.mark.timeout(300)

READERS = ("fed_reader1", "fed_reader2")
SEND_METRIC = 'endpoint="/_matrix/federation/v1/send/{txnId}"'


class ClusterFake(FakeRemote):
    """A FakeRemote that reaches the cluster over plain HTTP (nginx or one reader), its requests still
    X-Matrix signed for the cluster's server name. `missing_delay` slows its get_missing_events
    answers (a transaction that needs one then takes that long)."""

    def __init__(self, ca: TestCA, directory: Path, cluster_name: str, base_url: str) -> None:
        super().__init__(ca, directory)
        self.cluster_name = cluster_name
        self.base_url = base_url
        self.missing_delay = 0.0
        self.missing_calls: list[tuple[float, float]] = []  # (start, end) of each get_missing_events
        self._plain: aiohttp.ClientSession | None = None

    async def stop(self) -> None:
        if self._plain is not None:
            await self._plain.close()
        await super().stop()

    async def _on_missing(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        await asyncio.sleep(self.missing_delay)
        response = await super()._on_missing(request)
        self.missing_calls.append((start, time.monotonic()))
        return response

    # -- hosting a room (for the cluster's users to join over make_join/send_join) --------------------------
    def host_room(self, owner: str, version: str = "10") -> str:
        """A public room of ours, `owner` its creator (shared history)."""
        room_id = f"!{uuid.uuid4().hex[:12]}:{self.server_name}"
        self.rooms[room_id] = FakeRoom(room_id, KNOWN_ROOM_VERSIONS[version])
        self.build(room_id, owner, "m.room.create", {"creator": owner, "room_version": version}, "")
        self.build(room_id, owner, "m.room.member", {"membership": "join"}, owner)
        self.build(room_id, owner, "m.room.power_levels", {"users": {owner: 100}, "invite": 0}, "")
        self.build(room_id, owner, "m.room.join_rules", {"join_rule": "public"}, "")
        self.build(room_id, owner, "m.room.history_visibility", {"history_visibility": "shared"}, "")
        return room_id

    async def _unknown(self, request: web.Request) -> web.Response:
        parts = request.path.split("/")
        if request.method == "GET" and request.path.startswith("/_matrix/federation/v1/make_join/"):
            return self._make_join(unquote(parts[-2]), unquote(parts[-1]))
        if request.method == "PUT" and request.path.startswith("/_matrix/federation/v2/send_join/"):
            return self._send_join(unquote(parts[-2]), await request.json())
        if request.method == "GET" and request.path.startswith("/_matrix/federation/v1/backfill/"):
            return self._backfill(unquote(parts[-1]), request.query.getall("v", []),
                                  int(request.query.get("limit", "10")))
        return await super()._unknown(request)

    def _make_join(self, room_id: str, user_id: str) -> web.Response:
        room = self.rooms.get(room_id)
        if room is None:
            return self._error(404, "M_NOT_FOUND", "unknown room")
        _, pdu = self.build(room_id, user_id, "m.room.member", {"membership": "join"}, user_id, keep=False)
        template = {k: v for k, v in pdu.items() if k not in ("signatures", "hashes", "unsigned", "event_id")}
        return web.json_response({"room_version": room.rv.identifier, "event": template})

    def _send_join(self, room_id: str, pdu: JsonDict) -> web.Response:
        room = self.rooms[room_id]
        state_ids = list(room.state.values())
        answer = {"origin": self.server_name, "members_omitted": False, "servers_in_room": [self.server_name],
                  "state": [self.events[e] for e in state_ids],
                  "auth_chain": [self.events[e] for e in self.auth_chain(state_ids)], "event": pdu}
        self.take(room, self._event_id(pdu, room.rv), pdu)
        return web.json_response(answer)

    def _backfill(self, room_id: str, from_ids: list[str], limit: int) -> web.Response:
        found: dict[str, JsonDict] = {}
        todo = [e for e in from_ids if e in self.events]
        while todo and len(found) < limit:
            eid = todo.pop(0)
            if eid in found:
                continue
            found[eid] = self.events[eid]
            todo.extend(self._refs(self.events[eid]["prev_events"]))
        return web.json_response({"origin": self.server_name, "origin_server_ts": int(time.time() * 1000),
                                  "pdus": list(found.values())})

    async def request(self, destination: str, method: str, path: str, body: Any = None, *,
                      query: dict[str, Any] | None = None, authorization: str | None | bool = True,
                      signed_body: Any = None, base: str | None = None) -> tuple[int, Any]:
        from urllib.parse import urlencode

        if destination != self.cluster_name:
            return await super().request(destination, method, path, body, query=query,
                                         authorization=authorization, signed_body=signed_body)
        uri = path + ("?" + urlencode(query, doseq=True) if query else "")
        headers = {"Authorization": sign_request(self.server_name, destination, self.key, method, uri,
                                                 body if signed_body is None else signed_body)}
        if self._plain is None:
            self._plain = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        url = URL(f"{base or self.base_url}{uri}", encoded=True)
        async with self._plain.request(method, url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("fed-readers-ca"))


@pytest.fixture(scope="module")
def fed_cluster(pg_base_dsn: str, redis_url: str, ca: TestCA,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    def adjust(cfg: dict[str, Any]) -> None:
        cfg["federation_custom_ca_list"] = [str(ca.ca_path)]  # the fake servers' certificates
        cfg["ip_range_whitelist"] = ["127.0.0.0/8"]
        cfg["trusted_key_servers"] = []
        for name in READERS:
            repl = {"port": free_port(), "resources": ["replication"]}
            cfg["instance_map"][name] = {"host": "127.0.0.1", "port": repl["port"]}
            cfg["workers"][name] = {"app": "generic_worker", "listeners": [
                {"port": free_port(), "resources": ["federation", "metrics"]}, repl]}

    with running_cluster(pg_base_dsn, redis_url, tmp_path_factory.mktemp("fed-readers"), adjust) as c:
        yield c


@pytest.fixture
async def make_fake(fed_cluster: LocalCluster, ca: TestCA, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[ClusterFake] = []

    async def factory() -> ClusterFake:
        fake = ClusterFake(ca, tmp_path, fed_cluster.config.server_name, fed_cluster.base_url)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield factory
    finally:
        for fake in started:
            await fake.stop()


def reader_url(cluster: LocalCluster, instance: str) -> str:
    for listener in cluster.config.listeners_for(instance):
        if "federation" in listener.all_resources:
            return f"http://127.0.0.1:{listener.port}"
    raise KeyError(instance)


async def _user(cluster: LocalCluster, name: str) -> Client:
    c = Client(cluster.base_url)
    await c.register(name + uuid.uuid4().hex[:6])
    return c


async def _rooms_on_both_persisters(cluster: LocalCluster, alice: Client) -> dict[str, str]:
    """writer -> a public room of alice's that it persists."""
    writers = cluster.config.stream_writers.events
    rooms: dict[str, str] = {}
    for i in range(40):
        room = await alice.create_room(preset="public_chat", name=f"fed{i}")
        rooms.setdefault(writers[stable_shard(room, len(writers))], room)
        if len(rooms) == len(writers):
            return rooms
    raise AssertionError("40 rooms, all on one persister")


async def _persisted_by(cluster: LocalCluster, event_ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(cluster.config.database.postgres_dsn)
    try:
        rows = await conn.fetch("SELECT event_id, instance_name FROM events WHERE event_id = ANY($1::text[])",
                                event_ids)
    finally:
        await conn.close()
    return {r["event_id"]: r["instance_name"] for r in rows}


async def _sync_until(client: Client, since: str | None, found: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Sync (long-polling) until `found(body)` is true; the body where it was."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = await client.sync(since, timeout=2000,
                                 filter='{"room": {"timeline": {"limit": 100}}}')
        if found(body):
            return body
        since = body["next_batch"]
    raise AssertionError(f"not seen within {timeout}s; last sync: {body}")


def _timeline_ids(body: dict[str, Any], room: str) -> set[str]:
    joined = body.get("rooms", {}).get("join", {}).get(room, {})
    return {e["event_id"] for e in joined.get("timeline", {}).get("events", [])}


async def _send_counts(cluster: LocalCluster) -> dict[str, float]:
    """How many /send requests each reader has answered (its metrics)."""
    counts: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        for name in READERS:
            async with s.get(f"{reader_url(cluster, name)}/metrics") as r:
                text = await r.text()
            counts[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith("hs_http_requests_total{") and SEND_METRIC in line)
    return counts


async def _joined_fake(cluster: LocalCluster, make_fake: Any, alice: Client, rooms: dict[str, str]) -> tuple[ClusterFake, str]:
    fake: ClusterFake = await make_fake()
    mallory = fake.user_id("mallory")
    for room in rooms.values():
        await fake.join(cluster.config.server_name, room, "mallory")
    return fake, mallory


async def test_remote_join_pdus_and_edus_through_the_readers(fed_cluster: LocalCluster, make_fake: Any) -> None:
    alice = await _user(fed_cluster, "alice")
    try:
        rooms = await _rooms_on_both_persisters(fed_cluster, alice)
        since = (await alice.sync())["next_batch"]
        fake, mallory = await _joined_fake(fed_cluster, make_fake, alice, rooms)
        # The joins (send_join through nginx to a reader) were persisted by each room's persister.
        joins = {writer: fake.rooms[room].state[("m.room.member", mallory)] for writer, room in rooms.items()}
        assert await _persisted_by(fed_cluster, list(joins.values())) == {e: w for w, e in joins.items()}
        body = await _sync_until(alice, since, lambda b: all(joins[w] in _timeline_ids(b, r)
                                                             for w, r in rooms.items()))
        since = body["next_batch"]

        # Messages through nginx and straight to each reader, into rooms of both persisters.
        sent: dict[str, str] = {}  # event -> writer
        for base in (fed_cluster.base_url, *(reader_url(fed_cluster, r) for r in READERS)):
            pdus = []
            for writer, room in rooms.items():
                eid, pdu = fake.build(room, mallory, "m.room.message", {"msgtype": "m.text", "body": f"via {base}"})
                pdus.append(pdu)
                sent[eid] = writer
            status, answer = await fake.send_transaction(fed_cluster.config.server_name, pdus, base=base)
            assert status == 200, answer
            assert answer == {"pdus": {eid: {} for eid in list(sent)[-len(pdus):]}}, answer
        assert await _persisted_by(fed_cluster, list(sent)) == sent
        seen: set[str] = set()

        def all_seen(b: dict[str, Any]) -> bool:
            for room in rooms.values():
                seen.update(_timeline_ids(b, room))
            return set(sent) <= seen

        since = (await _sync_until(alice, since, all_seen))["next_batch"]
        # A retried transaction (same txn ID) is answered alike, nothing taken twice.
        eid, pdu = fake.build(rooms[next(iter(rooms))], mallory, "m.room.message", {"msgtype": "m.text", "body": "r"})
        first = await fake.send_transaction(fed_cluster.config.server_name, [pdu], txn_id="retried")
        again = await fake.send_transaction(fed_cluster.config.server_name, [pdu], txn_id="retried",
                                            base=reader_url(fed_cluster, READERS[1]))
        assert first == again == (200, {"pdus": {eid: {}}})

        # EDUs through a reader (neither writes typing, receipts or to-device).
        room = next(iter(rooms.values()))
        assert alice.user_id is not None and alice.device_id is not None
        message_id = uuid.uuid4().hex
        edus = [
            {"edu_type": "m.direct_to_device", "content": {
                "sender": mallory, "type": "m.test.readers", "message_id": message_id,
                "messages": {alice.user_id: {alice.device_id: {"hello": "from afar"}}}}},
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": mallory, "typing": True}},
            {"edu_type": "m.receipt", "content": {room: {"m.read": {mallory: {
                "event_ids": [eid], "data": {"ts": 1234}}}}}},
        ]
        for base in (reader_url(fed_cluster, READERS[0]), reader_url(fed_cluster, READERS[1])):
            status, answer = await fake.send_transaction(fed_cluster.config.server_name, [], edus, base=base)
            assert status == 200, answer
        # To-device and receipts were stored before /send answered: the very next sync has them.
        body = await alice.sync(since)
        to_device = [e for e in body.get("to_device", {}).get("events", []) if e.get("type") == "m.test.readers"]
        assert to_device == [{"sender": mallory, "type": "m.test.readers", "content": {"hello": "from afar"}}]
        ephemeral = body.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", [])
        receipts = [e for e in ephemeral if e["type"] == "m.receipt"]
        assert any(mallory in e["content"].get(eid, {}).get("m.read", {}) for e in receipts), ephemeral

        def typing(b: dict[str, Any]) -> bool:
            eph = b.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {}).get("events", [])
            return any(e["type"] == "m.typing" and mallory in e["content"]["user_ids"] for e in eph)

        if not typing(body):  # typing is handed over in the background: it may come a moment later
            await _sync_until(alice, body["next_batch"], typing)
    finally:
        await alice.close()


async def test_one_origin_goes_to_one_reader(fed_cluster: LocalCluster, make_fake: Any) -> None:
    """Through nginx each origin's /send requests all reach one reader; across origins, both are used."""
    used: dict[str, str] = {}
    for _ in range(12):
        fake: ClusterFake = await make_fake()
        before = await _send_counts(fed_cluster)
        for _ in range(3):
            status, answer = await fake.send_transaction(fed_cluster.config.server_name, [])
            assert status == 200 and answer == {"pdus": {}}, answer
        after = await _send_counts(fed_cluster)
        delta = {name: after[name] - before[name] for name in READERS}
        assert sorted(delta.values()) == [0, 3], delta
        used[fake.server_name] = next(name for name, n in delta.items() if n == 3)
    assert set(used.values()) == set(READERS), used


async def test_one_origins_transactions_are_serialized_across_readers(fed_cluster: LocalCluster,
                                                                       make_fake: Any) -> None:
    """Two transactions of one origin sent at once to the two readers: the second is taken only once
    the first (made slow: it needs a get_missing_events that the fake answers after 2 s) is done.
    Another origin's transaction meanwhile is not held up."""
    alice = await _user(fed_cluster, "serial")
    try:
        rooms = await _rooms_on_both_persisters(fed_cluster, alice)
        fake, mallory = await _joined_fake(fed_cluster, make_fake, alice, rooms)
        other, eve = await _joined_fake(fed_cluster, make_fake, alice, rooms)
        room_a, room_b = list(rooms.values())
        fake.serve_missing = True
        fake.missing_delay = 2.0
        fake.build(room_a, mallory, "m.room.message", {"msgtype": "m.text", "body": "gap"})  # not sent
        slow_id, slow = fake.build(room_a, mallory, "m.room.message", {"msgtype": "m.text", "body": "after gap"})
        quick_id, quick = fake.build(room_b, mallory, "m.room.message", {"msgtype": "m.text", "body": "quick"})
        eve_id, eve_pdu = other.build(room_b, eve, "m.room.message", {"msgtype": "m.text", "body": "eve"})
        name = fed_cluster.config.server_name
        r1, r2 = (reader_url(fed_cluster, r) for r in READERS)
        done: dict[str, float] = {}

        async def send(label: str, sender: ClusterFake, pdu: JsonDict, base: str) -> tuple[int, Any]:
            result = await sender.send_transaction(name, [pdu], base=base)
            done[label] = time.monotonic()
            return result

        start = time.monotonic()
        first = asyncio.create_task(send("slow", fake, slow, r1))
        await asyncio.sleep(0.5)  # the slow one holds the origin's lock by now
        second = asyncio.create_task(send("quick", fake, quick, r2))
        third = asyncio.create_task(send("eve", other, eve_pdu, r2))
        results = await asyncio.gather(first, second, third)
        assert results[0] == (200, {"pdus": {slow_id: {}}}), results
        assert results[1] == (200, {"pdus": {quick_id: {}}}), results
        assert results[2] == (200, {"pdus": {eve_id: {}}}), results
        assert len(fake.missing_calls) == 1 and fake.missing_calls[0][1] - fake.missing_calls[0][0] >= 2.0
        # Serialized: the quick transaction (sent 0.5 s in, to the other reader) ended after the slow one.
        assert done["quick"] >= done["slow"], (done, start)
        assert done["quick"] - start >= 2.0
        # Another origin waits for nobody.
        assert done["eve"] < done["slow"], (done, start)
    finally:
        await alice.close()


async def test_invite_join_and_backfill_of_a_remote_room_through_workers(fed_cluster: LocalCluster,
                                                                          make_fake: Any) -> None:
    """A room on a fake server: its invite of a cluster user reaches a reader (kept by the room's
    persister); the user's /join on a client worker is done by the room's persister (make_join and
    send_join to the fake) and answered once visible; paging back on a worker backfills older history
    through the persister."""
    alice = await _user(fed_cluster, "invitee")
    try:
        fake: ClusterFake = await make_fake()
        owner = fake.user_id("owner")
        room = fake.host_room(owner)
        old_id, _ = fake.build(room, owner, "m.room.message", {"msgtype": "m.text", "body": "before you came"})
        assert alice.user_id is not None
        invite_id, invite = fake.build(room, owner, "m.room.member", {"membership": "invite"}, alice.user_id)
        # (Run alone, on a fresh cluster, the invite would be the first event ever: a sync token taken
        # on an empty events stream already stands at position 1 and would skip it.)
        await alice.create_room(name="not empty")
        since = (await alice.sync())["next_batch"]
        status, answer = await fake.request(
            fed_cluster.config.server_name, "PUT", f"/_matrix/federation/v2/invite/{q(room)}/{q(invite_id)}",
            {"event": invite, "room_version": "10", "invite_room_state": []})
        assert status == 200, answer
        assert fed_cluster.config.server_name in answer["event"]["signatures"], answer
        writer = fed_cluster.config.stream_writers.events[
            stable_shard(room, len(fed_cluster.config.stream_writers.events))]
        assert await _persisted_by(fed_cluster, [invite_id]) == {invite_id: writer}
        await _sync_until(alice, since, lambda b: room in b.get("rooms", {}).get("invite", {}))

        status, joined = await alice.request("POST", f"/join/{q(room)}", {},
                                             params={"server_name": fake.server_name})
        assert status == 200 and joined["room_id"] == room, joined
        join_id = fake.rooms[room].state[("m.room.member", alice.user_id)]
        assert await _persisted_by(fed_cluster, [join_id]) == {join_id: writer}
        # Read-your-writes: the join is there at once for the joining user.
        status, members = await alice.request("GET", f"/rooms/{q(room)}/joined_members")
        assert status == 200 and alice.user_id in members["joined"], members

        status, page = await alice.request("GET", f"/rooms/{q(room)}/messages", params={"dir": "b", "limit": "50"})
        assert status == 200, page
        assert old_id in [e["event_id"] for e in page["chunk"]], page
        assert any(r.startswith("GET /_matrix/federation/v1/backfill/") for r in fake.requests)
        assert await _persisted_by(fed_cluster, [old_id]) == {old_id: writer}
    finally:
        await alice.close()


async def test_rejecting_a_remote_invite_through_a_worker(fed_cluster: LocalCluster, make_fake: Any) -> None:
    """A cluster user rejects a fake server's invite on a client worker: the room's persister tries
    make_leave with the fake (which does not offer it), then rejects the invite there alone; the
    worker answers once the leave is visible to the user."""
    alice = await _user(fed_cluster, "rejecter")
    try:
        fake: ClusterFake = await make_fake()
        owner = fake.user_id("owner")
        room = fake.host_room(owner)
        assert alice.user_id is not None
        invite_id, invite = fake.build(room, owner, "m.room.member", {"membership": "invite"}, alice.user_id)
        status, answer = await fake.request(
            fed_cluster.config.server_name, "PUT", f"/_matrix/federation/v2/invite/{q(room)}/{q(invite_id)}",
            {"event": invite, "room_version": "10", "invite_room_state": []})
        assert status == 200, answer
        status, body = await alice.request("POST", f"/rooms/{q(room)}/leave", {})
        assert status == 200, body
        assert any(r.startswith("GET /_matrix/federation/v1/make_leave/") for r in fake.requests), fake.requests
        writers = fed_cluster.config.stream_writers.events
        conn = await asyncpg.connect(fed_cluster.config.database.postgres_dsn)
        try:
            rows = await conn.fetch("SELECT m.membership, e.instance_name FROM room_memberships m JOIN events e"
                                    " USING (event_id) WHERE m.room_id = $1 AND m.user_id = $2"
                                    " ORDER BY m.stream_ordering", room, alice.user_id)
        finally:
            await conn.close()
        assert [(r["membership"], r["instance_name"]) for r in rows] == \
            [("invite", writers[stable_shard(room, len(writers))]), ("leave", writers[stable_shard(room, len(writers))])]
        # Read-your-writes: the invite is gone from the user's next sync.
        body = await alice.sync()
        assert room not in body["rooms"]["invite"], body["rooms"]
    finally:
        await alice.close()
