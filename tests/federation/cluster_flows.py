"""Steps the federating-cluster tests share (tests/federation/test_cluster_*.py): rooms shared with
another server, steady message traffic with its record of what was acknowledged, reading a room's
whole timeline as the other server's user sees it, "every event exactly once" checks, encrypted-style
to-device messages, and sampling the federation senders' leases.

The single-server federation tests' helpers are reused, not copied: tests/federation/test_rooms.py
(wait_for_event, wait_joined, text), test_edus.py (SyncWatcher, ...), test_e2ee.py (ok, second_device,
signed_device_keys, sync_until, ...).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.federation.client import MatrixServer, TlsClient, unique, user
from tests.federation.test_edus import SyncWatcher
from tests.federation.test_rooms import wait_joined

Json = dict[str, Any]


# -- rooms ---------------------------------------------------------------------------------------------
async def join_remote(client: TlsClient, room: str, via: MatrixServer, *servers: MatrixServer) -> str:
    """`client` joins `room` (an ID or alias) through `via`; returns the room ID. On failure the
    message carries the log tails of `via` and `servers`."""
    from urllib.parse import quote

    status, body = await client.request("POST", f"/join/{quote(room)}", {}, params={"server_name": via.server_name})
    if status != 200:
        logs = "\n".join(f"--- {s.server_name} ---\n{s.log_tail(60)}" for s in (via, *servers))
        raise AssertionError(f"{client.user_id} could not join {room} via {via.server_name}: {status} {body}\n{logs}")
    return str(body["room_id"])


async def shared_rooms(local: MatrixServer, remote: MatrixServer, n: int = 1,
                       local_name: str = "alice", remote_name: str = "bob") -> tuple[TlsClient, TlsClient, list[str]]:
    """A user on `local` creates `n` public rooms, a user on `remote` joins each over federation."""
    alice = await user(local, unique(local_name))
    bob = await user(remote, unique(remote_name))
    rooms = []
    for i in range(n):
        room_id = await alice.create_room(preset="public_chat", name=f"shared {i}")
        await join_remote(bob, room_id, local, remote)
        await wait_joined(alice, room_id, str(bob.user_id), timeout=30)
        rooms.append(room_id)
    return alice, bob, rooms


def timeline_events(body: Json, room_id: str) -> list[Json]:
    entry = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return list(entry.get("timeline", {}).get("events", []))


async def sync_sees(watcher: SyncWatcher, room_id: str, predicate: Callable[[Json], bool], what: str,
                    timeout: float = 30.0) -> Json:
    """The first timeline event of `room_id` matching `predicate` in the watcher's incremental /syncs."""
    found: Json = await watcher.wait(
        lambda b: next((e for e in timeline_events(b, room_id) if predicate(e)), None), what, timeout)
    return found


def message(body: str) -> Callable[[Json], bool]:
    return lambda e: e.get("type") == "m.room.message" and e.get("content", {}).get("body") == body


def membership_of(user_id: str | None, membership: str) -> Callable[[Json], bool]:
    return lambda e: (e.get("type") == "m.room.member" and e.get("state_key") == user_id
                      and e.get("content", {}).get("membership") == membership)


# -- traffic -------------------------------------------------------------------------------------------
async def send_retrying(client: TlsClient, room_id: str, body: str, attempts: int = 60) -> str:
    """What a real client does: retry a failed send with the same transaction ID (so a retry of a
    send that did go through is not a second event)."""
    txn = uuid.uuid4().hex
    last: Any = None
    for attempt in range(attempts):
        try:
            status, data = await client.request("PUT", f"/rooms/{room_id}/send/m.room.message/{txn}",
                                                {"msgtype": "m.text", "body": body})
        except Exception as exc:  # a connection reset while an instance restarts
            status, data = 599, repr(exc)
        if status == 200:
            return str(data["event_id"])
        last = (status, data)
        await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
    raise AssertionError(f"send of {body!r} never succeeded: {last}")


@dataclass
class Sent:
    room_id: str
    body: str
    event_id: str
    acked_at: float  # time.monotonic() when the send was answered


@dataclass
class Traffic:
    """Messages from `client` at `per_second`, round robin over `rooms`, until `stop()`; `sent` is
    what the server acknowledged, in order."""

    client: TlsClient
    rooms: Sequence[str]
    per_second: float
    prefix: str = field(default_factory=lambda: unique("msg"))
    sent: list[Sent] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        interval = 1.0 / self.per_second
        next_at = time.monotonic()
        i = 0
        while not self._stop.is_set():
            room_id = self.rooms[i % len(self.rooms)]
            body = f"{self.prefix} {i}"
            event_id = await send_retrying(self.client, room_id, body)
            self.sent.append(Sent(room_id, body, event_id, time.monotonic()))
            i += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()  # behind (a slow send): do not burst to catch up

    async def stop(self) -> list[Sent]:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.sent

    def in_room(self, room_id: str) -> list[Sent]:
        return [s for s in self.sent if s.room_id == room_id]


# -- what the other server has ---------------------------------------------------------------------------
async def room_timeline(client: TlsClient, room_id: str, max_pages: int = 40) -> list[Json]:
    """The room's whole timeline as `client` sees it, oldest first: /messages backwards to the
    create event (the server backfills gaps as it pages)."""
    events: list[Json] = []
    token: str | None = None
    for _ in range(max_pages):
        params = {"dir": "b", "limit": "100"}
        if token is not None:
            params["from"] = token
        status, page = await client.request("GET", f"/rooms/{room_id}/messages", params=params)
        assert status == 200, (status, page)
        chunk = page.get("chunk", [])
        events.extend(chunk)
        token = page.get("end")
        if not chunk or token is None or any(e.get("type") == "m.room.create" for e in chunk):
            break
    return list(reversed(events))


async def wait_delivered(client: TlsClient, room_id: str, expected: Sequence[Sent], timeout: float,
                         *servers: MatrixServer) -> list[Json]:
    """Poll `client`'s view of the room until every `expected` event is in it; return the room's
    messages. On timeout fail with what is missing and the servers' log tails."""
    want = {s.event_id for s in expected}
    deadline = time.monotonic() + timeout
    messages: list[Json] = []
    while True:
        messages = [e for e in await room_timeline(client, room_id) if e.get("type") == "m.room.message"]
        if want <= {e["event_id"] for e in messages}:
            return messages
        if time.monotonic() > deadline:
            missing = [s.body for s in expected if s.event_id not in {e["event_id"] for e in messages}]
            logs = "\n".join(f"--- {s.server_name} ---\n{s.log_tail(60)}" for s in servers)
            raise AssertionError(f"{len(missing)} of {len(expected)} events never reached {client.user_id} in "
                                 f"{room_id} within {timeout}s; missing {missing[:20]}\n{logs}")
        await asyncio.sleep(0.5)


def assert_exactly_once(messages: Sequence[Json], expected: Sequence[Sent]) -> None:
    """Every expected event is there once, and no message body of ours appears under two events (a
    send delivered twice as two events)."""
    ids = Counter(e["event_id"] for e in messages)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    ours = {s.body for s in expected}
    bodies = Counter(e.get("content", {}).get("body") for e in messages
                     if e.get("content", {}).get("body") in ours)
    assert all(n == 1 for n in bodies.values()), f"delivered twice: {[b for b, n in bodies.items() if n > 1]}"
    missing = {s.event_id for s in expected} - set(ids)
    assert not missing, f"{len(missing)} events missing"
    for s in expected:  # the same event, not one with the same body
        assert s.body in bodies, s


async def first_seen(client: TlsClient, room_id: str, event_id: str, timeout: float) -> float:
    """time.monotonic() when `client`'s server first shows the event (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, page = await client.request("GET", f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "30"})
        if status == 200 and any(e["event_id"] == event_id for e in page.get("chunk", [])):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event_id} did not reach {client.user_id} within {timeout}s")


async def acknowledged_at(cluster: Any, destination: str, event_id: str, timeout: float) -> float:
    """time.monotonic() when `destination` had acknowledged a transaction carrying the event (its
    federation_destinations progress reached the event's stream position; polled every 50 ms). This
    is when the event *reached* the server; showing it to its users may take the server longer (Synapse
    works through a backlog of received PDUs one room event at a time). `cluster` is a FederatingCluster."""
    deadline = time.monotonic() + timeout
    rows = await cluster.fetch("SELECT stream_ordering FROM events WHERE event_id = $1", event_id)
    assert rows, f"{event_id} is not in the cluster's events table"
    position = int(rows[0]["stream_ordering"])
    row = None
    while time.monotonic() < deadline:
        row = await cluster.destination_row(destination)
        done = row and row["last_successful_stream_ordering"] is not None
        if done and row is not None and int(row["last_successful_stream_ordering"]) >= position:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{destination} did not acknowledge {event_id} (stream position {position}) within "
                         f"{timeout}s; its row: {row}")


_ORIGIN = re.compile(r'origin=(?:\\x22|")?([^\\",]+)')


def send_upstreams(access_log: Sequence[str]) -> dict[str, set[str]]:
    """From nginx's access log (cluster_hs.ACCESS_LOG_FORMAT): each X-Matrix origin's /send requests'
    upstream addresses."""
    out: dict[str, set[str]] = {}
    for line in access_log:
        if " PUT /_matrix/federation/v1/send/" not in line:
            continue
        origin = _ORIGIN.search(line.split(' auth="', 1)[-1])
        upstream = re.search(r"upstream=(\S+)", line)
        if origin and upstream:
            out.setdefault(origin.group(1), set()).add(upstream.group(1))
    return out


# -- to-device -----------------------------------------------------------------------------------------
def olm_content(marker: str) -> Json:
    """An m.room.encrypted to-device content shaped as Olm's (the servers pass it through); the
    ciphertext body is `marker`, so the receiver can find it."""
    return {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "c2VuZGVyLWN1cnZlLWtleQ",
            "ciphertext": {"cmVjZWl2ZXItY3VydmUta2V5": {"type": 0, "body": marker}}}


async def send_encrypted_to_device(sender: TlsClient, user_id: str, device_id: str, marker: str) -> None:
    status, body = await sender.request("PUT", f"/sendToDevice/m.room.encrypted/{uuid.uuid4().hex}",
                                        {"messages": {user_id: {device_id: olm_content(marker)}}})
    assert status == 200, body


def encrypted_to_device(body: Json, marker: str) -> list[Json]:
    return [e for e in body.get("to_device", {}).get("events", [])
            if e.get("type") == "m.room.encrypted" and marker in json.dumps(e.get("content"))]


# -- federation senders --------------------------------------------------------------------------------
def rendezvous_owner(instances: Sequence[str], destination: str) -> str:
    """The federation sender a destination belongs to among `instances`: hs's own rule
    (hs.federation.sender.rendezvous_owner) when it has one, else the same highest-random-weight
    rule on SHA-256 of (instance, destination)."""
    from hs.federation import sender

    rule = getattr(sender, "rendezvous_owner", None)
    if rule is not None:
        return str(rule(destination, list(instances)))
    return max(instances, key=lambda i: hashlib.sha256(f"{i}\x00{destination}".encode()).digest())


@dataclass
class ReceivedTxn:
    at: float  # seconds since the epoch, from Synapse's log line
    txn_id: str
    pdus: int
    edus: int


_TXN_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Received txn (\S+) from (\S+)\. "
                       r"\(PDUs: (\d+), EDUs: (\d+)\)")


def synapse_received(log_text: str, origin: str, since: float = 0.0) -> list[ReceivedTxn]:
    """The transactions Synapse's log says it received from `origin` (at or after `since`, epoch s)."""
    out = []
    for line in log_text.splitlines():
        m = _TXN_LINE.match(line)
        if m and m.group(3) == origin:
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time
            if at >= since:
                out.append(ReceivedTxn(at, m.group(2), int(m.group(4)), int(m.group(5))))
    return out


def interleaved_senders(received: Sequence[ReceivedTxn]) -> list[str]:
    """Sending processes whose transactions to the server interleaved in time: two senders sending to
    one destination at once. A sending process is told by its transaction IDs' prefix (hs names them
    `<start time ms><instance hash>.<counter>`, so each process run has its own); each run's
    transactions must come in one stretch, after the previous run's last one."""
    runs: list[str] = []
    for txn in received:
        run = txn.txn_id.rsplit(".", 1)[0]
        if not runs or runs[-1] != run:
            runs.append(run)
    counts = Counter(runs)
    return [f"{run} ({n} stretches; order {runs})" for run, n in counts.items() if n > 1]


@dataclass
class LeaseSample:
    at_ms: int
    rows: list[Json]


class LeaseSampler:
    """Reads federation_destinations every `interval` seconds while a test runs (one connection)."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        self.dsn = dsn
        self.interval = interval
        self.samples: list[LeaseSample] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> LeaseSampler:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            rows = await self._conn.fetch(
                "SELECT destination, lease_owner, lease_expires_ts FROM federation_destinations")
            self.samples.append(LeaseSample(int(time.time() * 1000), [dict(r) for r in rows]))
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._conn.close()

    def unexpired_owners(self, sample: LeaseSample, destination: str) -> set[str]:
        return {r["lease_owner"] for r in sample.rows if r["destination"] == destination
                and r["lease_owner"] is not None and r["lease_expires_ts"] >= sample.at_ms}

    def double_owned(self, destination: str) -> list[tuple[int, set[str]]]:
        """Samples where the destination had more than one owner with an unexpired lease."""
        out = []
        for s in self.samples:
            owners = self.unexpired_owners(s, destination)
            if len(owners) > 1:
                out.append((s.at_ms, owners))
        return out

    def transitions(self, destination: str) -> list[tuple[int, str | None, int]]:
        """(sample time, owner, lease expiry) each time the destination's owner changed."""
        out: list[tuple[int, str | None, int]] = []
        for s in self.samples:
            for r in s.rows:
                if r["destination"] == destination and (not out or out[-1][1] != r["lease_owner"]):
                    out.append((s.at_ms, r["lease_owner"], int(r["lease_expires_ts"])))
        return out


async def lease_owner(dsn_owner: Any, destination: str, timeout: float = 30.0) -> str:
    """The federation sender holding `destination`'s unexpired lease (waits for one to take it);
    `dsn_owner` is anything with `destination_row(destination)` (a FederatingCluster)."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await dsn_owner.destination_row(destination)
        if row and row["lease_owner"] and row["lease_expires_ts"] >= time.time() * 1000:
            return str(row["lease_owner"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no federation sender holds a lease on {destination} within {timeout}s; row {row}")
