"""Inbound EDUs (typing, receipts, presence, to-device, device list and signing key updates): one
handler per EDU type, registered on the transaction handler.

On a cluster, an EDU whose stream another instance writes (typing, receipts, to-device) is handed to
that writer (`edu_writer`; hs/replication/federation_calls.py), which runs the handler here. Presence
and device-list changes need no hand-over: their services forward to their writers themselves.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hs.db.stores.presence import PRESENCE_STATES
from hs.events.auth import get_domain
from hs.events.event import JsonDict
from hs.federation.acl import server_allowed
from hs.util import now_ms

if TYPE_CHECKING:
    from hs.federation.transactions import TransactionHandler
    from hs.server import HomeServer


# EDU type -> the stream its handler writes, for those a non-writer hands to the stream's writer.
EDU_STREAMS = {"m.typing": "typing", "m.receipt": "receipts", "m.direct_to_device": "to_device"}
# Of those, the ones /send answers only once stored (typing is ephemeral: handed over, not awaited).
AWAITED_EDUS = frozenset({"m.receipt", "m.direct_to_device"})


def edu_writer(hs: HomeServer, edu_type: str) -> str | None:
    """The instance that must run this EDU's handler, when it is not this one (else None)."""
    stream_name = EDU_STREAMS.get(edu_type)
    if stream_name is None:
        return None
    stream = hs.streams[stream_name]
    return None if stream.is_writer else stream.writers[0]


def register_edu_handlers(hs: HomeServer, transactions: TransactionHandler) -> None:
    """Fill `transactions.edu_handlers` (EDU type -> async handler(origin, content))."""
    _register_typing_receipts_presence(hs, transactions)
    _register_e2ee(hs, transactions)


_logger = logging.getLogger(__name__)


# -- m.typing, m.receipt, m.presence ---------------------------------------------------------------------
def _register_typing_receipts_presence(hs: HomeServer, transactions: TransactionHandler) -> None:
    handlers = RoomEphemeralEdus(hs)
    transactions.edu_handlers["m.typing"] = handlers.on_typing
    transactions.edu_handlers["m.receipt"] = handlers.on_receipt
    transactions.edu_handlers["m.presence"] = handlers.on_presence


class RoomEphemeralEdus:
    """Typing, read receipts and presence of other servers' users. Each item must be about a user of
    the origin server (a server speaks only for its own users); typing and receipts also about a room
    the user is joined to in this server's current state. Anything else is dropped, item by item; the
    rest goes through the same services as local input.

    Presence needs no shared room: a server sends its users' presence as soon as our user joins their
    room, which may be before our side of the join is persisted. Who may see it is decided at /sync
    (room-mates only), as for local users."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    def _speaks_for(self, origin: str, user_id: Any) -> bool:
        if not isinstance(user_id, str) or not user_id.startswith("@") or get_domain(user_id) != origin:
            _logger.info("EDU from %s about %r, not one of its users: dropped", origin, user_id)
            return False
        return True

    async def _joined(self, room_id: Any, user_id: str) -> bool:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            return False
        membership = await self.hs.event_store.get_membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            _logger.info("EDU about %s in %s, where they are not joined: dropped", user_id, room_id)
            return False
        acl = await self.hs.event_store.get_current_state_event(room_id, "m.room.server_acl")
        if acl is not None and not server_allowed(acl.content, get_domain(user_id)):
            _logger.info("EDU about %s in %s dropped: the room's server ACL denies their server", user_id, room_id)
            return False
        return True

    async def on_typing(self, origin: str, content: JsonDict) -> None:
        room_id, user_id, typing = content.get("room_id"), content.get("user_id"), content.get("typing")
        if not isinstance(typing, bool) or not self._speaks_for(origin, user_id):
            return
        assert isinstance(user_id, str)
        if not await self._joined(room_id, user_id):
            return
        assert isinstance(room_id, str)
        await self.hs.typing.receive_remote(room_id, user_id, typing)

    async def on_receipt(self, origin: str, content: JsonDict) -> None:
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict):
                continue
            reads = by_type.get("m.read")  # the only receipt type servers exchange
            if not isinstance(reads, dict):
                continue
            for user_id, receipt in reads.items():
                if not isinstance(receipt, dict) or not self._speaks_for(origin, user_id):
                    continue
                event_ids = receipt.get("event_ids")
                if not isinstance(event_ids, list) or not event_ids or not isinstance(event_ids[0], str):
                    continue
                data = receipt.get("data")
                data = data if isinstance(data, dict) else {}
                ts = data.get("ts")
                thread_id = data.get("thread_id")
                if not await self._joined(room_id, user_id):
                    continue
                stored = await self.hs.receipts.receive_remote(
                    room_id, user_id, event_ids[0], thread_id if isinstance(thread_id, str) else None,
                    ts if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0 else now_ms())
                if not stored:
                    _logger.debug("receipt of %s for %s in %s not stored (unknown event or not newer)",
                                  user_id, event_ids[0], room_id)

    async def on_presence(self, origin: str, content: JsonDict) -> None:
        updates = content.get("push")
        if not isinstance(updates, list):
            return
        for update in updates:
            if not isinstance(update, dict) or not self._speaks_for(origin, update.get("user_id")):
                continue
            user_id: str = update["user_id"]
            presence = update.get("presence")
            if presence not in PRESENCE_STATES:
                continue
            status_msg = update.get("status_msg")
            ago = update.get("last_active_ago")
            await self.hs.presence.receive_remote(
                user_id, presence, status_msg if isinstance(status_msg, str) else None,
                ago if isinstance(ago, int) and not isinstance(ago, bool) and ago >= 0 else 0,
                update.get("currently_active") is True)


# -- m.direct_to_device, m.device_list_update, m.signing_key_update --------------------------------------
def _register_e2ee(hs: HomeServer, transactions: TransactionHandler) -> None:
    """To-device messages and device-list / cross-signing changes: checked and applied by the E2EE
    service (hs/services/e2ee.py), which drops what is not about a user of the origin."""

    transactions.edu_handlers["m.direct_to_device"] = hs.e2ee.on_direct_to_device
    transactions.edu_handlers["m.device_list_update"] = hs.e2ee.on_remote_device_list_update
    transactions.edu_handlers["m.signing_key_update"] = hs.e2ee.on_remote_device_list_update
