"""Sending as a client: PUT /send (messages, and redactions sent as events), PUT /state and PUT
/redact.

`EventSender.send` builds, authorises and persists; this service adds what the client-server API puts
on top: transaction IDs (a replay answers with the original event, before any rate limit), the message
rate limit, membership changes sent as state (which go through `RoomMembership`), aliases in
`m.room.canonical_alias` checked to point at the room, and no-op state changes answered with the
existing event (as Synapse does).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from hs.errors import bad_json, bad_request, forbidden, invalid_param
from hs.events.auth import is_valid_user_id
from hs.events.event import JsonDict
from hs.events.room_versions import RoomVersion
from hs.services.admin_users import admin_users
from hs.services.room_ids import check_room_id
from hs.services.room_membership import MEMBER

TOMBSTONE = "m.room.tombstone"


_FAKE_ID_KEY = secrets.token_bytes(32)


def fake_event_id(*txn: str) -> str:
    """An event ID in the shape of a real one (room versions 4+), answered to a shadow-banned sender:
    the same for a replayed transaction (user, device, room, txn ID) in this process, as a real send's
    would be; random without one."""
    if not txn:
        return "$" + secrets.token_urlsafe(32)
    digest = hmac.new(_FAKE_ID_KEY, "\0".join(txn).encode(), hashlib.sha256).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.auth import Requester


class ClientEventSender:
    """The client-server API's sends, on top of `EventSender`."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store

    async def send_event(self, requester: Requester, room_id: str, etype: str, content: JsonDict,
                         txn_id: str) -> str:
        """PUT /send: idempotent per (user, device, room, txn_id)."""
        redacts = None
        if etype == TOMBSTONE:
            raise bad_request("m.room.tombstone is a state event")  # as Synapse refuses it
        if etype == "m.room.redaction":
            target = content.get("redacts")
            if not isinstance(target, str):
                raise bad_json("m.room.redaction needs a 'redacts' event ID")
            redacts = target
        return await self._send_with_txn(requester, room_id, etype, content, txn_id, redacts)

    async def _send_with_txn(self, requester: Requester, room_id: str, etype: str, content: JsonDict,
                             txn_id: str, redacts: str | None) -> str:
        """A client send keyed by a transaction ID: a replay answers with the original event before
        any rate limit, and the sender is told the lookup was done so it is not repeated."""
        check_room_id(room_id)
        user_id = requester.user_id
        existing = await self.store.get_event_id_for_txn(user_id, requester.device_id, room_id, txn_id)
        if existing is not None:
            return str(existing)
        rv = await self._require_room_for_send(room_id)
        if await self._shadow_banned(user_id):
            return fake_event_id(user_id, requester.device_id, room_id, txn_id)
        if redacts is not None:
            target = await self.store.get_event(redacts)
            if target is not None and target.room_id != room_id:
                # 400 as in Synapse (the writer's own check answers 404, as for an unknown event).
                raise bad_request("Cannot redact an event of another room")
        self.hs.ratelimiters["message"].check(user_id)
        ev = await self.hs.event_sender.send(room_id, user_id, etype, content,
                                             txn=(user_id, requester.device_id, txn_id), redacts=redacts,
                                             room_version=rv, txn_checked=True)
        self.hs.presence.user_active(user_id)
        return ev.event_id

    async def send_state(self, requester: Requester, room_id: str, etype: str, state_key: str,
                         content: JsonDict) -> str:
        rv = await self._require_room_for_send(room_id)
        user_id = requester.user_id
        if etype == MEMBER:
            membership = content.get("membership")
            if not isinstance(membership, str):
                raise bad_json("m.room.member content needs a 'membership' string")
            if not is_valid_user_id(state_key):
                raise invalid_param("The state key of m.room.member must be a user ID")
            rest = {k: v for k, v in content.items() if k != "membership"}
            reason = rest.pop("reason", None)
            if reason is not None and not isinstance(reason, str):
                raise bad_json("'reason' must be a string")
            ev = await self.hs.room_membership.update_membership(requester, room_id, state_key, membership, reason,
                                                                 rest)
            return ev.event_id
        if etype == "m.room.canonical_alias":
            await self.hs.room_aliases.check_canonical_alias(room_id, content)
        if etype == TOMBSTONE and content.get("replacement_room") == room_id:
            # A room replaced by itself would send clients round in a loop (Synapse refuses it too).
            raise bad_request("A tombstone cannot name the room it is sent in")
        current = await self.store.get_current_state_event(room_id, etype, state_key)
        if current is not None and current.sender == user_id and current.content == content:
            return current.event_id
        if await self._shadow_banned(user_id):
            return fake_event_id()
        self.hs.ratelimiters["message"].check(user_id)
        ev = await self.hs.event_sender.send(room_id, user_id, etype, content, state_key=state_key,
                                             room_version=rv)
        if etype == "m.room.guest_access" and state_key == "" and content.get("guest_access") != "can_join":
            await self.hs.room_membership.kick_guests(room_id)  # the spec: guests must leave
        return ev.event_id

    async def redact(self, requester: Requester, room_id: str, event_id: str, txn_id: str,
                     content: JsonDict) -> str:
        return await self._send_with_txn(requester, room_id, "m.room.redaction", content, txn_id, event_id)

    async def _shadow_banned(self, user_id: str) -> bool:
        """A shadow-banned user's send is answered as if it worked, and nothing is stored (Synapse's
        admin API shadow-ban; the flag is cached by hs/services/admin_users.py)."""
        return await admin_users(self.hs).is_shadow_banned(user_id)

    async def _require_room_for_send(self, room_id: str) -> RoomVersion:
        check_room_id(room_id)
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            raise forbidden("Unknown room")
        return rv
