"""Sending events and EDUs to other servers: the `federation_sender` duty (main in a monolith; the
`federation_sender_instances` in a cluster).

**Where the work comes from.** A sender follows the events stream like any reader (it does not have to
be told about an event by the process that persisted it): it reads each new batch of rows once, keeps
which servers are in which room up to date from the membership rows it reads (loaded once at start,
never a per-event "hosts in room" query), and hands each event sent by a local user (or relayed by this
server for a remote joiner, `federation_event_relays`) to the queues of the other servers in its room.
EDUs come from the durable outbox table (to-device, device lists, receipts) and, for typing and
presence, from the `federation` replication channel (hs/federation/outbox.py).

**Durable catch-up.** Per destination, `last_successful_stream_ordering` says up to where it has every
event it is owed. A destination whose in-memory queue cannot be trusted (after a start, a failed
transaction, an overflowing queue, a lease taken over from another sender) is *catching up*: its PDUs
are read from the events table after that position, 50 at a time, in stream order, in the rooms it
shares with us, until it has caught up with the stream; then it goes back to its live queue. Nothing of
the backlog is held in memory. A very long backlog (`MAX_CATCH_UP_EVENTS`) is cut to its newest events:
the remote side fills older gaps itself (get_missing_events, backfill).

**One owner per destination.** Destinations are spread over the sender instances by rendezvous (highest
random weight) hashing, so adding or removing a sender moves only the destinations that must move. The
owner also holds a lease on the destination's row (`lease_owner`, `lease_expires_ts`), renewed while it
runs and released when it stops: an instance whose hash now points at a destination another instance
still leases waits until that instance lets go (it restarted with the new config, or its lease expired
after a crash), then catches the destination up from the database. So a rolling restart that changes
`federation_sender_instances` never has two senders sending to one server, and loses nothing.

**Backoff.** A failed transaction puts the destination in backoff (the `federation:` config section,
Synapse's keys), recorded in its row; a request from that server ends the wait at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from prometheus_client import Counter, Gauge

from hs.db.stores.federation_sending import FederationSendingStore
from hs.events.auth import get_domain
from hs.events.event import Event, JsonDict
from hs.federation.outbox import CHANNEL
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

TRANSACTIONS_SENT = Counter("hs_federation_transactions_sent_total", "Transactions sent", ["outcome"])
PDUS_SENT = Counter("hs_federation_pdus_sent_total", "PDUs delivered to other servers (one per destination)")
EDUS_SENT = Counter("hs_federation_edus_sent_total", "EDUs delivered to other servers")
BACKOFFS = Counter("hs_federation_backoffs_total", "Times a destination went into backoff")
DESTINATIONS = Gauge("hs_federation_destinations", "Destinations this sender owns, by state", ["state"])
QUEUED_PDUS = Gauge("hs_federation_queued_pdus", "PDUs waiting in live queues")
QUEUED_EDUS = Gauge("hs_federation_queued_edus", "Ephemeral EDUs waiting in queues")
OLDEST_UNSENT = Gauge("hs_federation_oldest_unsent_seconds",
                      "Age of the oldest PDU or ephemeral EDU waiting in a live queue")
STREAM_LAG = Gauge("hs_federation_stream_lag", "Events stream positions not yet read by this sender")

MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100
# A live queue longer than this is dropped and the destination catches up from the database instead.
MAX_QUEUED_PDUS = 1_000
MAX_QUEUED_EPHEMERAL_EDUS = 100
# A catch-up owing more than this many events sends only the newest that many.
MAX_CATCH_UP_EVENTS = 5_000
# Rooms per catch-up query (an IN list).
CATCH_UP_ROOM_CHUNK = 500
# Events stream rows read per batch.
READ_BATCH = 1_000
LEASE_TTL_MS = 30_000
LEASE_RENEW_S = 10.0
# A lease is used only while it has at least this long left (clock skew, a slow renewal).
LEASE_MARGIN_MS = 10_000
# How often a destination's progress is written while it is being sent to.
PROGRESS_WRITE_S = 1.0
# How long a stop waits for transactions in flight.
CLOSE_GRACE_S = 0.5
# How often the read position is recorded.
POSITION_WRITE_S = 1.0
# After a start, at most this many destinations set up their connection and first transaction at once.
STARTUP_CONCURRENCY = 64
# The outbox and the ephemeral channel are looked at this often even without a message (Redis lost one).
POLL_S = 5.0


def federation_pdu(event: Event) -> JsonDict:
    """The event as sent to other servers: without the local `unsigned` additions."""
    return {k: v for k, v in event.pdu.items() if k != "unsigned"}


def coalesce_presence(edus: list[JsonDict]) -> list[JsonDict]:
    """Presence updates batched: one `m.presence` EDU per transaction, with each user's latest state
    (in the place of the first); other EDUs unchanged and in order."""
    latest: dict[str, JsonDict] = {}
    out: list[JsonDict] = []
    placed = False
    for edu in edus:
        push = edu.get("content", {}).get("push") if edu.get("edu_type") == "m.presence" else None
        if not isinstance(push, list):
            out.append(edu)
            continue
        for update in push:
            if isinstance(update, dict) and isinstance(update.get("user_id"), str):
                latest.pop(update["user_id"], None)  # re-inserted last: the newest wins
                latest[update["user_id"]] = update
        if not placed:
            out.append({"edu_type": "m.presence", "content": {"push": []}})
            placed = True
    for edu in out:
        if edu.get("edu_type") == "m.presence" and placed and edu["content"].get("push") == []:
            edu["content"]["push"] = list(latest.values())
    return out


def rendezvous_owner(destination: str, instances: Iterable[str]) -> str:
    """The instance with the highest hash of (instance, destination): the same answer everywhere, and
    adding or removing one instance moves only the destinations it wins or held."""
    return max(instances, key=lambda i: hashlib.sha256(f"{i}\x00{destination}".encode()).digest())


class RoomServers:
    """Which other servers have joined members in each room, kept from membership rows as they are read."""

    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.loaded = False
        self._members: dict[str, dict[str, str]] = {}  # room -> remote joined user -> server
        self._counts: dict[str, Tally[str]] = {}  # room -> server -> joined users
        self._rooms_of: dict[str, set[str]] = {}  # server -> rooms
        # server -> rooms it has left (its last member gone), with the position of that event: what it
        # is owed there ends there (a kick it has not been sent yet is still its due).
        self._left: dict[str, dict[str, int]] = {}

    def load(self, rows: Iterable[tuple[str, str]], rooms: Iterable[str] = ()) -> None:
        """Every room's remote joined members (`rooms`: rooms known to have none)."""
        self._members.clear()
        self._counts.clear()
        self._rooms_of.clear()
        for room_id in rooms:
            self._members[room_id] = {}
        for room_id, user_id in rows:
            self.apply(room_id, user_id, "join")
        self.loaded = True

    def knows(self, room_id: str) -> bool:
        return room_id in self._members

    def load_room(self, room_id: str, joined: Iterable[str]) -> None:
        """Replace one room's members with its current joined members (read from the database)."""
        for user_id in list(self._members.get(room_id, {})):
            self.apply(room_id, user_id, "leave")
        self._members.setdefault(room_id, {})
        for user_id in joined:
            self.apply(room_id, user_id, "join")

    def apply(self, room_id: str, user_id: str, membership: str | None, position: int | None = None) -> None:
        server = get_domain(user_id)
        if server == self.server_name:
            return
        members = self._members.setdefault(room_id, {})
        counts = self._counts.setdefault(room_id, Tally())
        if membership == "join":
            if user_id in members:
                return
            members[user_id] = server
            counts[server] += 1
            self._rooms_of.setdefault(server, set()).add(room_id)
            self._left.get(server, {}).pop(room_id, None)
        elif members.pop(user_id, None) is not None:
            counts[server] -= 1
            if counts[server] <= 0:
                del counts[server]
                rooms = self._rooms_of.get(server)
                if rooms is not None:
                    rooms.discard(room_id)
                    if not rooms:
                        del self._rooms_of[server]
                if position is not None:
                    self._left.setdefault(server, {})[room_id] = position

    def servers(self, room_id: str) -> frozenset[str]:
        return frozenset(self._counts.get(room_id, ()))

    def rooms_of(self, server: str) -> list[str]:
        return sorted(self._rooms_of.get(server, ()))

    def rooms_left(self, server: str, after: int) -> dict[str, int]:
        """Rooms the server left after position `after`, with the position it left at (older ones are
        forgotten: the server has everything up to `after`)."""
        left = self._left.get(server)
        if not left:
            return {}
        for room_id in [r for r, p in left.items() if p <= after]:
            del left[room_id]
        return dict(left)


class _Destination:
    """One server's sending state in the sender that owns it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pdus: deque[tuple[int, str, float]] = deque()  # (stream ordering, event ID, queued at)
        self.edus: deque[tuple[JsonDict, float]] = deque()  # ephemeral (typing, presence)
        self.catching_up = True  # until proven otherwise, the database says what it is owed
        self.outbox_pending = True
        self.last_successful: int | None = None
        self.retry_until = 0.0  # monotonic time before which nothing is tried
        self.retry_interval_ms = 0
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.in_flight = False
        self.lease_denied_until = 0.0
        # Its first transaction after a start waits for one of the start-up slots.
        self.starting = False
        # Progress (last_successful) as last written to the database, and when; and whether the row
        # records a backoff that a success must clear.
        self.saved_progress: int | None = None
        self.saved_at = 0.0
        self.failed_in_db = False

    def has_work(self) -> bool:
        return bool(self.pdus or self.edus or self.catching_up or self.outbox_pending)

    def to_catch_up(self) -> None:
        """The live queue is not to be trusted: read what is owed from the database instead."""
        self.catching_up = True
        self.pdus.clear()


class FederationSender:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.local_suffix = ":" + hs.server_name
        self.instance = hs.instance_name
        self.instances = list(hs.config.federation_sender_instances) or [hs.instance_name]
        tuning = hs.config.federation
        self.min_retry_ms = tuning.destination_min_retry_interval
        self.retry_multiplier = tuning.destination_retry_multiplier
        self.max_retry_ms = tuning.destination_max_retry_interval
        self.store = FederationSendingStore(hs.db)
        self.room_servers = RoomServers(hs.server_name)
        self._destinations: dict[str, _Destination] = {}
        self._known: set[str] = set()  # destinations with a row
        self._leases: dict[str, int] = {}  # destination -> lease expiry (ms) held by this instance
        self._cursor = 0
        self._stored_cursor = 0
        self._position_written_at = 0.0
        self._read_wake = asyncio.Event()
        self._startup_slots = asyncio.Semaphore(STARTUP_CONCURRENCY)
        self._tasks: list[asyncio.Task[None]] = []
        self._txn_prefix = f"{int(time.time() * 1000)}{hashlib.sha256(self.instance.encode()).hexdigest()[:4]}"
        self._txn_counter = 0
        self._closed = False
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    def subscribe(self) -> None:
        """Before the replication transport starts: the channels this sender listens on."""
        self.hs.replication.subscribe(CHANNEL, self._on_channel_message)
        self.hs.replication.subscribe("events", lambda _msg: self._read_wake.set())

    async def start(self) -> None:
        self.room_servers.load(await self.store.joined_remote_members(self.local_suffix))
        rows = await self.store.all_destinations()
        self._known = {r.destination for r in rows}
        stored = await self.store.get_position(self.instance)
        current = self.hs.events_stream.current_position()
        # A sender without a stored position (a new instance) starts at the stream's head: what other
        # servers were owed before is in their rows, and whoever owns them catches them up.
        self._cursor = self._stored_cursor = stored if stored is not None else current
        if stored is None:
            await self.store.set_position(self.instance, current)
        mine = [r for r in rows if self._is_mine(r.destination)]
        loop = asyncio.get_running_loop()
        # Every lease at once (one statement), not one destination at a time.
        taken = await self.store.take_leases([r.destination for r in mine], self.instance, now_ms(), LEASE_TTL_MS)
        expiry = now_ms() + LEASE_TTL_MS
        for row in mine:
            dest = self._destination(row.destination)
            dest.last_successful = dest.saved_progress = row.last_successful_stream_ordering
            dest.failed_in_db = bool(row.retry_interval or row.failure_ts is not None)
            if row.destination in taken:
                self._leases[row.destination] = expiry
            else:
                dest.lease_denied_until = loop.time() + LEASE_RENEW_S / 2
            if row.retry_interval:
                # Respect a backoff recorded before the restart.
                wait_s = max(0.0, (row.retry_last_ts + row.retry_interval - now_ms()) / 1000)
                dest.retry_until = loop.time() + wait_s
                dest.retry_interval_ms = row.retry_interval
            # Every destination catches up now, but at most STARTUP_CONCURRENCY of them open their
            # connection and send their first transaction at once: a restart must not open a thousand
            # connections together.
            dest.starting = True
            self._kick(dest)
        self._started = True
        self._tasks.append(loop.create_task(self._read_loop()))
        self._tasks.append(loop.create_task(self._lease_loop()))
        self._tasks.append(loop.create_task(self._poll_loop()))

    async def close(self) -> None:
        self._closed = True
        # Transactions in flight finish (and record their progress) if they can do so quickly: the next
        # owner then need not send them again. The loops stop after their current step.
        sending = [d.task for d in self._destinations.values() if d.in_flight and d.task is not None]
        if sending:
            await asyncio.wait(sending, timeout=CLOSE_GRACE_S)
        tasks = [*self._tasks, *(d.task for d in self._destinations.values() if d.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._started:
            try:
                for dest in self._destinations.values():
                    if dest.name in self._leases:
                        await self._save_progress(dest, force=True)
                await self._store_position(force=True)
                await self.store.release_leases(sorted(self._leases), self.instance)
            except Exception as e:  # the database is going away too: the leases expire by themselves
                logger.warning("federation sender: releasing leases at shutdown failed: %s", e)
            self._leases.clear()
        self._update_gauges()

    # -- ownership ---------------------------------------------------------------------------------------
    def _is_mine(self, destination: str) -> bool:
        return len(self.instances) == 1 or rendezvous_owner(destination, self.instances) == self.instance

    def owns(self, destination: str) -> bool:
        """Whether this sender holds a usable lease on the destination."""
        return self._leases.get(destination, 0) - now_ms() > LEASE_MARGIN_MS

    async def _take_lease(self, dest: _Destination) -> bool:
        if self.owns(dest.name):
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < dest.lease_denied_until:
            return False
        if dest.name not in self._known:  # EDUs only so far: the row carries the lease
            await self.store.add_destinations({dest.name: self._cursor})
            self._known.add(dest.name)
        taken = await self.store.take_leases([dest.name], self.instance, now_ms(), LEASE_TTL_MS)
        if dest.name not in taken:
            # Another sender holds it (a rolling restart): ask again a little later, not per event.
            dest.lease_denied_until = loop.time() + LEASE_RENEW_S / 2
            return False
        self._leases[dest.name] = now_ms() + LEASE_TTL_MS
        # Another sender may have sent meanwhile: start from the row, not from memory.
        row = await self.store.get_destination(dest.name)
        dest.last_successful = row.last_successful_stream_ordering if row is not None else None
        dest.to_catch_up()
        return True

    async def _lease_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                held = sorted(self._leases)
                renewed = await self.store.take_leases(held, self.instance, now_ms(), LEASE_TTL_MS)
                expiry = now_ms() + LEASE_TTL_MS
                for name in held:
                    if name in renewed:
                        self._leases[name] = expiry
                    else:
                        logger.warning("federation sender: lost the lease on %s", name)
                        self._leases.pop(name, None)
                # Progress not yet written (the destination went quiet within PROGRESS_WRITE_S).
                for dest in list(self._destinations.values()):
                    if dest.name in self._leases and not dest.in_flight:
                        await self._save_progress(dest)
                # Destinations that are ours but were leased elsewhere: try again (their old owner may
                # have let go after a config change).
                for dest in self._destinations.values():
                    if dest.name not in self._leases and dest.has_work():
                        dest.lease_denied_until = 0.0
                        self._kick(dest)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("federation sender: renewing leases failed: %s", e)
            self._update_gauges()

    # -- input -------------------------------------------------------------------------------------------
    def _on_channel_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        names = [d for d in msg.get("destinations") or () if isinstance(d, str) and self._is_mine(d)]
        if not names or self._closed:
            return
        for name in names:
            dest = self._destination(name)
            if kind == "outbox":
                dest.outbox_pending = True
            elif kind == "edu" and isinstance(msg.get("edu"), dict):
                dest.edus.append((msg["edu"], time.monotonic()))
                while len(dest.edus) > MAX_QUEUED_EPHEMERAL_EDUS:
                    dest.edus.popleft()
            elif kind == "wake":
                if dest.retry_until:
                    dest.retry_until = 0.0
                    dest.retry_interval_ms = 0
                    dest.catching_up = True  # whatever was owed during the outage
            self._kick(dest)

    def _destination(self, name: str) -> _Destination:
        dest = self._destinations.get(name)
        if dest is None:
            dest = self._destinations[name] = _Destination(name)
        return dest

    def _kick(self, dest: _Destination) -> None:
        if self._closed:
            return
        dest.wake.set()
        if dest.task is None or dest.task.done():
            dest.task = asyncio.get_running_loop().create_task(self._run(dest))

    async def _poll_loop(self) -> None:
        """Durable EDUs whose announcement was lost (Redis away) are still found."""
        while not self._closed:
            await asyncio.sleep(POLL_S)
            try:
                for name in await self.store.destinations_with_edus():
                    if self._is_mine(name):
                        dest = self._destination(name)
                        if not dest.outbox_pending:
                            dest.outbox_pending = True
                            self._kick(dest)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("federation sender: polling the outbox failed: %s", e)

    async def _read_loop(self) -> None:
        """Follow the events stream: every batch of rows is read once and routed to the queues."""
        while not self._closed:
            self._read_wake.clear()
            try:
                await self._read_new_events()
                await self._store_position()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("federation sender: reading the events stream failed")
                await asyncio.sleep(1.0)
                continue
            if self._read_wake.is_set():
                continue
            waiter = asyncio.ensure_future(self._read_wake.wait())
            try:
                await asyncio.wait((waiter,), timeout=POLL_S)
            finally:
                waiter.cancel()

    async def _read_new_events(self) -> None:
        while True:
            upto = self.hs.events_stream.current_position()
            STREAM_LAG.set(max(0, upto - self._cursor))
            if upto <= self._cursor:
                return
            rows = await self.store.events_between(self._cursor, upto, READ_BATCH)
            if not rows:
                self._cursor = upto
                continue
            await self._route(rows)
            self._cursor = int(rows[-1]["stream_ordering"]) if len(rows) == READ_BATCH else upto
            await self._store_position()

    async def _store_position(self, force: bool = False) -> None:
        """Record how far the stream has been read, at most every POSITION_WRITE_S: a restart re-reads
        at most that much, and re-reading is harmless (a started sender catches every destination up
        from its own row, and new destinations get their row before the cursor moves past them)."""
        now = time.monotonic()
        if force or now - self._position_written_at >= POSITION_WRITE_S:
            self._position_written_at = now
            if self._cursor != self._stored_cursor:
                await self.store.set_position(self.instance, self._cursor)
                self._stored_cursor = self._cursor

    async def _route(self, rows: list[Any]) -> None:
        """Queue each sendable event for the other servers in its room; remember new destinations
        (durably, before the position moves past them)."""
        remote_ids = [r["event_id"] for r in rows if not r["sender"].endswith(self.local_suffix)]
        relays = await self.store.get_relays(remote_ids)
        plans: list[tuple[int, str, set[str]]] = []
        new: dict[str, int] = {}
        for row in rows:
            room_id = row["room_id"]
            is_member = row["type"] == "m.room.member" and row["state_key"] is not None
            if not self.room_servers.knows(room_id):
                # A room first seen (created, or joined over federation: its state came in with the
                # join, not through the stream): read who is in it once, then follow it.
                self.room_servers.load_room(room_id, await self.hs.event_store.get_joined_members(room_id))
            before = self.room_servers.servers(room_id)
            if is_member and row["state_key"].endswith(self.local_suffix) and row["membership"] == "join" \
                    and row["sender"].endswith(self.local_suffix) and before == frozenset():
                # Our user joined a room over federation (state arrived with the join): re-read it.
                self.room_servers.load_room(room_id, await self.hs.event_store.get_joined_members(room_id))
                before = frozenset()
            if is_member:
                self.room_servers.apply(room_id, row["state_key"], row["membership"], int(row["stream_ordering"]))
            relay_origin = relays.get(row["event_id"])
            if not row["sender"].endswith(self.local_suffix) and relay_origin is None:
                continue
            targets = set(before) | self.room_servers.servers(room_id)
            if is_member:
                # A remote user's leave, kick or ban also goes to that user's server.
                targets.add(get_domain(row["state_key"]))
            targets.discard(self.server_name)
            targets.discard(relay_origin or "")
            targets = {t for t in targets if self.hs.config.federation_allowed(t)}
            position = int(row["stream_ordering"])
            for t in targets:
                if t not in self._known and t not in new:
                    new[t] = position - 1
            plans.append((position, row["event_id"], targets))
        if new:
            await self.store.add_destinations(new)
            self._known.update(new)
        # The events go out to several servers, each on its own task: read them once, here (into the
        # event cache), rather than once per destination.
        wanted = [event_id for _p, event_id, targets in plans if any(self._is_mine(t) for t in targets)]
        if wanted:
            await self.hs.event_store.get_events(wanted)
        queued_at = time.monotonic()
        for position, event_id, targets in plans:
            for name in targets:
                if not self._is_mine(name):
                    continue
                dest = self._destination(name)
                if name in new and dest.last_successful is None:
                    dest.last_successful = new[name]
                if not dest.catching_up:
                    dest.pdus.append((position, event_id, queued_at))
                    if len(dest.pdus) > MAX_QUEUED_PDUS:
                        logger.info("federation sender: queue for %s overflowed; catching up from the database",
                                    name)
                        dest.to_catch_up()
                self._kick(dest)

    # -- sending -----------------------------------------------------------------------------------------
    async def _run(self, dest: _Destination) -> None:
        loop = asyncio.get_running_loop()
        while dest.has_work() and not self._closed:
            dest.wake.clear()
            wait = dest.retry_until - loop.time()
            if wait > 0:
                await self._sleep(dest, wait)
                continue
            try:
                if not await self._take_lease(dest):
                    # Another sender still holds it (a rolling restart): the lease loop tries again.
                    return
                if dest.starting:
                    async with self._startup_slots:
                        await self._send_next(dest)
                    dest.starting = False
                else:
                    await self._send_next(dest)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("federation sender: sending to %s failed unexpectedly", dest.name)
                await self._sleep(dest, 1.0)

    async def _sleep(self, dest: _Destination, seconds: float) -> None:
        waiter = asyncio.ensure_future(dest.wake.wait())
        try:
            await asyncio.wait((waiter,), timeout=seconds)
        finally:
            waiter.cancel()
        dest.wake.clear()

    async def _send_next(self, dest: _Destination) -> None:
        """Build and send one transaction (nothing when nothing is owed or the lease is not usable)."""
        caught_up_to: int | None = None
        if dest.catching_up:
            pdu_rows, caught_up_to = await self._owed(dest)
        else:
            pdu_rows = [(p, e) for p, e, _t in list(dest.pdus)[:MAX_PDUS_PER_TRANSACTION]]
        live_count = 0 if dest.catching_up else len(pdu_rows)
        ephemeral = [e for e, _t in list(dest.edus)[:MAX_EDUS_PER_TRANSACTION]]
        durable: list[tuple[int, str, Any]] = []
        room_for = MAX_EDUS_PER_TRANSACTION - len(ephemeral)
        if dest.outbox_pending and room_for > 0:
            # Cleared before reading: an announcement arriving meanwhile sets it again.
            dest.outbox_pending = False
            durable = await self.store.get_edus(dest.name, room_for)
            if len(durable) == room_for:
                dest.outbox_pending = True
        cursor_at_build = self._cursor
        events = await self.hs.event_store.get_events([e for _p, e in pdu_rows])
        pdus = [federation_pdu(events[e]) for _p, e in pdu_rows if e in events]
        edus = [*coalesce_presence(ephemeral), *({"edu_type": t, "content": c} for _i, t, c in durable)]
        if not pdus and not edus:
            self._after_catch_up_read(dest, caught_up_to, None)
            return
        if not self.owns(dest.name):
            return
        dest.in_flight = True
        try:
            ok = await self._send_transaction(dest.name, pdus, edus)
        finally:
            dest.in_flight = False
        if not ok:
            if durable:
                dest.outbox_pending = True
            await self._failed(dest)
            return
        PDUS_SENT.inc(len(pdus))
        EDUS_SENT.inc(len(edus))
        for _ in range(live_count):
            dest.pdus.popleft()
        for _ in ephemeral:
            dest.edus.popleft()
        await self.store.delete_edus([i for i, _t, _c in durable])
        progress = pdu_rows[-1][0] if pdu_rows else None
        if dest.catching_up:
            self._after_catch_up_read(dest, caught_up_to, progress)
            if not dest.catching_up and caught_up_to is not None:
                progress = max(progress or 0, caught_up_to)
        elif not dest.pdus:
            progress = max(progress or 0, cursor_at_build)
        if progress is not None and (dest.last_successful is None or progress > dest.last_successful):
            dest.last_successful = progress
        await self._save_progress(dest)
        dest.retry_interval_ms = 0
        return

    async def _save_progress(self, dest: _Destination, force: bool = False) -> None:
        """Record the destination's progress, and clear a recorded backoff. While transactions follow
        each other (its queue not drained) progress is written at most every PROGRESS_WRITE_S: after a
        crash at most that much is sent again (receivers drop events and to-device messages they already
        have). Once the queue has drained, or a backoff is to be cleared, it is written at once."""
        now = time.monotonic()
        unsaved = dest.last_successful is not None and dest.last_successful != dest.saved_progress
        busy = bool(dest.pdus) or dest.catching_up
        due = force or not busy or now - dest.saved_at >= PROGRESS_WRITE_S
        if not dest.failed_in_db and not (unsaved and due):
            return
        await self.store.set_sent(dest.name, dest.last_successful)
        dest.saved_progress = dest.last_successful
        dest.saved_at = now
        dest.failed_in_db = False

    async def _owed(self, dest: _Destination) -> tuple[list[tuple[int, str]], int | None]:
        """Catch-up: the next events owed to the destination, from the database. The second value is
        the stream position the read covered when it found fewer than a transaction's worth (the
        destination is then up to date as of it), else None."""
        upto = self._cursor
        after = dest.last_successful if dest.last_successful is not None else upto
        rooms = self.room_servers.rooms_of(dest.name)
        rows = await self._owed_rows(rooms, after, upto, MAX_PDUS_PER_TRANSACTION + 1, dest.name)
        if len(rows) > MAX_PDUS_PER_TRANSACTION:
            skip_to = await self._cut_backlog(rooms, after, upto, dest.name)
            if skip_to is not None:
                logger.info("federation sender: %s is owed more than %d events; sending the newest",
                            dest.name, MAX_CATCH_UP_EVENTS)
                dest.last_successful = after = skip_to
                rows = await self._owed_rows(rooms, after, upto, MAX_PDUS_PER_TRANSACTION + 1, dest.name)
        full = len(rows) > MAX_PDUS_PER_TRANSACTION
        return rows[:MAX_PDUS_PER_TRANSACTION], None if full else upto

    async def _owed_rows(self, rooms: list[str], after: int, upto: int, limit: int,
                         destination: str) -> list[tuple[int, str]]:
        """Owed events in the rooms the destination is in, and in those it left since `after` up to its
        leaving (the kick or leave itself included)."""
        found: list[tuple[int, str]] = []
        reads = [(rooms[i:i + CATCH_UP_ROOM_CHUNK], upto) for i in range(0, len(rooms), CATCH_UP_ROOM_CHUNK)]
        reads += [([room_id], min(upto, left_at))
                  for room_id, left_at in self.room_servers.rooms_left(destination, after).items()]
        for chunk, bound in reads:
            rows = await self.store.owed_events(chunk, after, bound, self.local_suffix, limit)
            found.extend((int(r["stream_ordering"]), r["event_id"]) for r in rows
                         if r["relay_origin"] != destination)
        found.sort()
        return found[:limit]

    async def _cut_backlog(self, rooms: list[str], after: int, upto: int, destination: str) -> int | None:
        """The position before the newest MAX_CATCH_UP_EVENTS owed events, if more are owed."""
        owed = await self._owed_rows(rooms, after, upto, 10 * MAX_CATCH_UP_EVENTS, destination)
        if len(owed) <= MAX_CATCH_UP_EVENTS:
            return None
        return owed[-MAX_CATCH_UP_EVENTS][0] - 1

    def _after_catch_up_read(self, dest: _Destination, caught_up_to: int | None, progress: int | None) -> None:
        """A catch-up read that found less than a transaction's worth, with nothing read from the stream
        since, leaves the destination up to date: its live queue takes over."""
        if dest.catching_up and caught_up_to is not None and caught_up_to == self._cursor:
            dest.catching_up = False
            dest.pdus.clear()
            if progress is None and (dest.last_successful is None or caught_up_to > dest.last_successful):
                dest.last_successful = caught_up_to

    async def _failed(self, dest: _Destination) -> None:
        interval = dest.retry_interval_ms
        interval = self.min_retry_ms if not interval else int(interval * self.retry_multiplier)
        interval = min(self.max_retry_ms, interval)
        dest.retry_interval_ms = interval
        # Jitter, so that destinations failing together do not retry together.
        dest.retry_until = asyncio.get_running_loop().time() + interval / 1000 * random.uniform(0.8, 1.2)
        dest.to_catch_up()
        BACKOFFS.inc()
        try:
            await self.store.set_failed(dest.name, now_ms(), interval)
            dest.failed_in_db = True
        except Exception as e:
            logger.warning("federation sender: recording the backoff of %s failed: %s", dest.name, e)

    def _next_txn_id(self) -> str:
        self._txn_counter += 1
        return f"{self._txn_prefix}.{self._txn_counter}"

    async def _send_transaction(self, destination: str, pdus: list[JsonDict], edus: list[JsonDict]) -> bool:
        txn_id = self._next_txn_id()
        body: dict[str, Any] = {"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": pdus}
        if edus:
            body["edus"] = edus
        try:
            response = await self.hs.federation_client.put_json(
                destination, f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}", body)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            TRANSACTIONS_SENT.labels("failed").inc()
            logger.info("transaction %s to %s failed: %s", txn_id, destination, e)
            return False
        TRANSACTIONS_SENT.labels("sent").inc()
        results = response.get("pdus") if isinstance(response, dict) else None
        if isinstance(results, dict):
            for event_id, result in results.items():
                if isinstance(result, dict) and result.get("error"):
                    logger.info("%s refused %s: %s", destination, event_id, result["error"])
        return True

    # -- the operator's view -------------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        states: Tally[str] = Tally()
        queued = edus = 0
        oldest: float | None = None
        for dest in self._destinations.values():
            if dest.retry_until > asyncio.get_event_loop().time():
                states["backing_off"] += 1
            elif dest.catching_up:
                states["catching_up"] += 1
            else:
                states["live"] += 1
            queued += len(dest.pdus)
            edus += len(dest.edus)
            for stamp in ([dest.pdus[0][2]] if dest.pdus else []) + ([dest.edus[0][1]] if dest.edus else []):
                oldest = stamp if oldest is None else min(oldest, stamp)
        for state in ("live", "catching_up", "backing_off"):
            DESTINATIONS.labels(state).set(states[state])
        QUEUED_PDUS.set(queued)
        QUEUED_EDUS.set(edus)
        OLDEST_UNSENT.set(0 if oldest is None else time.monotonic() - oldest)

    def status(self) -> dict[str, Any]:
        """What this sender is doing, per destination (tests and debugging)."""
        return {name: {"queued_pdus": len(d.pdus), "queued_edus": len(d.edus), "catching_up": d.catching_up,
                       "leased": self.owns(name), "last_successful": d.last_successful}
                for name, d in self._destinations.items()}
