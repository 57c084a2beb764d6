"""What every process hands to the federation senders: EDUs for other servers, relayed events, and
"this server is up again" wake-ups. Works the same in the monolith and in a cluster.

- EDUs that must not be lost (to-device messages, device list and signing key updates, receipts) are
  written to the `federation_edu_outbox` table before this returns; the destination's sender deletes
  them once a transaction carrying them has been acknowledged, so a crash or an outage loses none.
- Typing and presence are ephemeral: published on the `federation` replication channel, queued in
  memory by the sender that owns the destination, gone if no sender is up.
- Events need nothing here: the senders follow the events stream. A remote user's membership event this
  server took through send_join/send_leave/send_knock is recorded as a *relay* before it is persisted,
  so the senders pass it on to the rest of the room (not back to its origin).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hs.db.stores.federation_sending import FederationSendingStore
from hs.events.auth import get_domain
from hs.util import LruCache, now_ms

if TYPE_CHECKING:
    from hs.federation.sender import FederationSender
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

# The replication channel senders listen on; messages: {"kind": "outbox"|"edu"|"wake", ...}.
CHANNEL = "federation"
DURABLE_EDU_TYPES = frozenset({"m.direct_to_device", "m.device_list_update", "m.signing_key_update",
                               "m.receipt"})
# An inbound request wakes its server's sender at most this often (seconds) from one process.
WAKE_INTERVAL_S = 5.0


def sends_federation(hs: HomeServer) -> bool:
    """Whether any process of this deployment sends to other servers."""
    return bool(hs.config.send_federation or hs.config.federation_sender_instances)


class FederationOutbox:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.server_name = hs.server_name
        self.store = FederationSendingStore(hs.db)
        self.enabled = sends_federation(hs)
        # room -> the other servers with joined members; dropped when the room's membership changes
        # (every process hears of that through the events stream).
        self._room_servers: LruCache[str, frozenset[str]] = LruCache(50_000, name="federation.outbox.self._room_servers")
        self._woken: dict[str, float] = {}
        hs.replication.subscribe("events", self._on_events_message)

    def _on_events_message(self, msg: dict[str, Any]) -> None:
        if msg.get("users") or msg.get("gap"):
            for room_id in msg.get("rooms") or ():
                self._room_servers.pop(room_id)
            if msg.get("gap"):
                self._room_servers.clear()

    # -- who is in a room ------------------------------------------------------------------------------
    async def servers_in_room(self, room_id: str) -> frozenset[str]:
        """The other servers with a joined member in the room."""
        sender: FederationSender | None = self.hs.__dict__.get("federation_sender")
        if sender is not None and sender.room_servers.loaded:  # kept up to date by the sender itself
            return sender.room_servers.servers(room_id)
        servers = self._room_servers.get(room_id)
        if servers is None:
            members = await self.hs.event_store.get_joined_members(room_id)
            servers = frozenset(get_domain(m) for m in members) - {self.server_name}
            self._room_servers.set(room_id, servers)
        return servers

    # -- EDUs --------------------------------------------------------------------------------------------
    def _wanted(self, destination: str) -> bool:
        return destination != self.server_name and self.hs.config.federation_allowed(destination)

    async def send_edu(self, destination: str, edu_type: str, content: dict[str, Any]) -> None:
        await self.send_edus([destination], edu_type, content)

    async def send_edus(self, destinations: Iterable[str], edu_type: str, content: dict[str, Any]) -> None:
        """One EDU to several servers: stored first when it must not be lost, else published."""
        if not self.enabled:
            return
        targets = sorted({d for d in destinations if self._wanted(d)})
        if not targets:
            return
        if edu_type in DURABLE_EDU_TYPES:
            await self.store.add_edus([(d, edu_type, content) for d in targets], now_ms())
            await self._publish({"kind": "outbox", "destinations": targets})
        else:
            await self._publish({"kind": "edu", "destinations": targets,
                                 "edu": {"edu_type": edu_type, "content": content}})

    async def send_edu_to_room(self, room_id: str, edu_type: str, content: dict[str, Any]) -> None:
        await self.send_edus(await self.servers_in_room(room_id), edu_type, content)

    # -- relays and wake-ups -------------------------------------------------------------------------
    async def record_relay(self, event_id: str, origin: str) -> None:
        """Before persisting a remote user's event taken through send_join/leave/knock: the senders
        then pass it on to the room's other servers."""
        if self.enabled:
            await self.store.add_relay(event_id, origin)

    async def wake_destination(self, origin: str) -> None:
        """A request from `origin` arrived: it is up, so its sender retries at once (rate-limited)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._woken.get(origin, -WAKE_INTERVAL_S) < WAKE_INTERVAL_S:
            return
        if len(self._woken) > 10_000:
            self._woken.clear()
        self._woken[origin] = now
        await self._publish({"kind": "wake", "destinations": [origin]})

    async def reset_connection(self, destination: str) -> bool:
        """The admin's reset_connection: forget the backoff, and have the sender try at once. False when
        the destination is unknown."""
        if not await self.store.reset_backoff(destination):
            return False
        self._woken.pop(destination, None)
        await self._publish({"kind": "wake", "destinations": [destination]})
        return True

    async def _publish(self, data: dict[str, Any]) -> None:
        await self.hs.replication.publish(CHANNEL, self.hs.instance_name, 0, data)
