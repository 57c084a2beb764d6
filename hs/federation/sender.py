"""Sending events and EDUs to the other servers in a room: one queue and one transaction in flight per
destination.

This is the monolith's in-process sender: what a destination has not acknowledged is kept in memory
and retried with exponential backoff (Synapse's `destination_*_retry_*` defaults), and an inbound
request from that server retries at once. Making it durable across restarts and sharding it over
`federation_sender` workers is the cluster issue's part.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from prometheus_client import Counter

from hs.events.auth import get_domain
from hs.events.event import Event, JsonDict

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

TRANSACTIONS_SENT = Counter("hs_federation_transactions_sent_total", "Transactions sent", ["outcome"])

MAX_PDUS_PER_TRANSACTION = 50
MAX_EDUS_PER_TRANSACTION = 100
# Backoff after a failed transaction (seconds): Synapse's destination_min_retry_interval (10 min)
# is long for a small server; hs starts lower and grows the same way, capped at a day.
MIN_RETRY_INTERVAL_S = 2.0
RETRY_MULTIPLIER = 2.0
MAX_RETRY_INTERVAL_S = 24 * 3600.0
# A destination's queue beyond this drops its oldest PDUs (the remote side fills gaps by itself).
MAX_QUEUED_PDUS = 10_000


def federation_pdu(event: Event) -> JsonDict:
    """The event as sent to other servers: without the local `unsigned` additions."""
    return {k: v for k, v in event.pdu.items() if k != "unsigned"}


class _Destination:
    __slots__ = ("name", "pdus", "edus", "task", "retry_interval", "wake")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pdus: deque[JsonDict] = deque()
        self.edus: deque[JsonDict] = deque()
        self.task: asyncio.Task[None] | None = None
        self.retry_interval = 0.0
        self.wake = asyncio.Event()


class FederationSender:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self._destinations: dict[str, _Destination] = {}
        # The other servers with joined members, per room; recomputed after a membership change.
        self._room_servers: dict[str, frozenset[str]] = {}
        self._txn_ids = itertools.count(int(time.time() * 1000))
        self._closed = False

    # -- what to send ------------------------------------------------------------------------------------
    async def servers_in_room(self, room_id: str) -> frozenset[str]:
        servers = self._room_servers.get(room_id)
        if servers is None:
            members = await self.hs.event_store.get_joined_members(room_id)
            servers = frozenset(get_domain(m) for m in members) - {self.server_name}
            self._room_servers[room_id] = servers
        return servers

    def forget_room_servers(self, room_id: str) -> None:
        self._room_servers.pop(room_id, None)

    async def on_events_persisted(self, room_id: str, events: list[Event], relay_from: str | None = None) -> None:
        """Queue events persisted here for the other servers in the room: local events, and events
        another server sent us to relay (send_join/leave/knock: `relay_from` is that server, which
        has them already)."""
        if self._closed:
            return
        before = await self.servers_in_room(room_id)
        if any(ev.membership is not None for ev in events):
            self.forget_room_servers(room_id)
        after = await self.servers_in_room(room_id)
        destinations = set(before) | set(after)
        for ev in events:
            # A remote user's leave, kick or ban also goes to that user's server.
            if ev.membership is not None and ev.state_key and get_domain(ev.state_key) != self.server_name:
                destinations.add(get_domain(ev.state_key))
        destinations.discard(self.server_name)
        if relay_from is not None:
            destinations.discard(relay_from)
        pdus = [federation_pdu(ev) for ev in events]
        for name in destinations:
            if self.hs.config.federation_allowed(name):
                self._enqueue(name, pdus=pdus)

    def send_edu(self, destination: str, edu_type: str, content: JsonDict) -> None:
        if self._closed or destination == self.server_name or not self.hs.config.federation_allowed(destination):
            return
        self._enqueue(destination, edus=[{"edu_type": edu_type, "content": content}])

    async def send_edu_to_room(self, room_id: str, edu_type: str, content: JsonDict) -> None:
        for name in await self.servers_in_room(room_id):
            self.send_edu(name, edu_type, content)

    def wake_destination(self, destination: str) -> None:
        """An inbound request from `destination`: it is up, so retry at once."""
        dest = self._destinations.get(destination)
        if dest is not None and dest.retry_interval:
            dest.retry_interval = 0.0
            dest.wake.set()

    # -- the queues --------------------------------------------------------------------------------------
    def _enqueue(self, name: str, pdus: list[JsonDict] | None = None, edus: list[JsonDict] | None = None) -> None:
        dest = self._destinations.get(name)
        if dest is None:
            dest = self._destinations[name] = _Destination(name)
        dest.pdus.extend(pdus or ())
        while len(dest.pdus) > MAX_QUEUED_PDUS:
            dest.pdus.popleft()
        dest.edus.extend(edus or ())
        if dest.task is None or dest.task.done():
            dest.task = asyncio.get_running_loop().create_task(self._run(dest))

    async def _run(self, dest: _Destination) -> None:
        while (dest.pdus or dest.edus) and not self._closed:
            pdus = [dest.pdus[i] for i in range(min(MAX_PDUS_PER_TRANSACTION, len(dest.pdus)))]
            edus = [dest.edus[i] for i in range(min(MAX_EDUS_PER_TRANSACTION, len(dest.edus)))]
            txn_id = str(next(self._txn_ids))
            ok = await self._send_transaction(dest.name, txn_id, pdus, edus)
            if ok:
                for _ in pdus:
                    dest.pdus.popleft()
                for _ in edus:
                    dest.edus.popleft()
                dest.retry_interval = 0.0
                continue
            dest.retry_interval = min(MAX_RETRY_INTERVAL_S,
                                      max(MIN_RETRY_INTERVAL_S, dest.retry_interval * RETRY_MULTIPLIER))
            dest.wake.clear()
            # (not asyncio.wait_for: on Python 3.11 it can swallow a cancellation at shutdown)
            waiter = asyncio.ensure_future(dest.wake.wait())
            try:
                await asyncio.wait((waiter,), timeout=dest.retry_interval)
            finally:
                waiter.cancel()

    async def _send_transaction(self, destination: str, txn_id: str, pdus: list[JsonDict],
                                edus: list[JsonDict]) -> bool:
        body: dict[str, Any] = {"origin": self.server_name, "origin_server_ts": int(time.time() * 1000),
                                "pdus": pdus}
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

    async def close(self) -> None:
        self._closed = True
        tasks = [d.task for d in self._destinations.values() if d.task is not None and not d.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
