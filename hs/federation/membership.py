"""Membership handshakes across servers, both sides: make_join/send_join (and leave), for a remote user
joining a room here and for a local user joining a room on another server.

A server not yet in a room cannot build the join event itself: it asks a resident server for a
template (`make_join`), signs it, and sends it back (`send_join`); the resident server checks it,
persists it, relays it to the room's other servers, and answers with the room state before the join
and its auth chain, from which the joining server builds its copy of the room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from hs.errors import (
    MatrixError,
    bad_json,
    bad_request,
    forbidden,
    incompatible_room_version,
    not_found,
    unavailable,
    unreachable,
)
from hs.events.auth import AuthError, get_domain
from hs.events.event import Event, JsonDict, StateKey
from hs.events.hashing import check_content_hash, compute_content_hash
from hs.events.redaction import redact_shallow
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from hs.events.signing import finish_local_event, sign_event
from hs.federation.acl import check_server_acl
from hs.federation.client import FederationError
from hs.federation.event_handler import PduRejected, parse_pdu
from hs.federation.remote import RemoteRooms
from hs.federation.sender import federation_pdu
from hs.services.admin_rooms import check_not_blocked
from hs.util import now_ms, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)
T = TypeVar("T")

MEMBER = "m.room.member"
_TEMPLATE_STRIPPED = ("signatures", "hashes", "unsigned", "event_id")


class FederationMembership:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.remote = RemoteRooms(hs.federation_client)

    # -- resident side ---------------------------------------------------------------------------------
    async def make_membership(self, origin: str, room_id: str, user_id: str, membership: str,
                              versions: list[str] | None) -> JsonDict:
        """make_join / make_leave / make_knock: an unsigned event template for a user of `origin`."""
        if get_domain(user_id) != origin:
            raise forbidden(f"{origin} cannot make a membership event for {user_id}")
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            raise not_found(f"Unknown room {room_id}")
        await check_server_acl(self.hs, origin, room_id)
        if versions is not None and rv.identifier not in versions:
            raise incompatible_room_version(rv.identifier)
        content: JsonDict = {"membership": membership}
        if membership == "join":
            state = await self.store.get_current_state_events(room_id, [("m.room.join_rules", "")])
            rule = state.get(("m.room.join_rules", ""))
            if rule is not None and rule.content.get("join_rule") in ("restricted", "knock_restricted") \
                    and rv.restricted_join_rule:
                current = await self.store.get_membership(room_id, user_id)
                if current is None or current[0] not in ("join", "invite"):
                    authoriser = await self.hs.room_membership._restricted_join_authoriser(
                        room_id, user_id, await self.store.get_current_state_events(room_id))
                    if authoriser is None:
                        raise forbidden("The user is not in any room this room's join rule allows")
                    content["join_authorised_via_users_server"] = authoriser
        pdu = await self.hs.event_sender.template(room_id, user_id, MEMBER, content, user_id, rv)
        if not rv.updated_redaction_rules:
            pdu["origin"] = origin
        return {"event": pdu, "room_version": rv.identifier}

    async def on_send_membership(self, origin: str, room_id: str, event_id: str, pdu: Any,
                                 membership: str) -> Event:
        """send_join / send_leave / send_knock: check and persist the event the remote user signed,
        relay it to the room's other servers; returns it. On a cluster worker that does not persist
        the room's events, the room's writer does it all (and the event is returned once seen here)."""
        if not self.hs.events_stream.is_writer_for_room(room_id):
            from hs.replication.federation_calls import forward_send_membership

            return await forward_send_membership(self.hs, origin, room_id, event_id, pdu, membership)
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            raise not_found(f"Unknown room {room_id}")
        await check_server_acl(self.hs, origin, room_id)
        handler = self.hs.federation_event_handler
        try:
            event = await handler.checked_event(pdu, rv)
        except PduRejected as e:
            raise bad_json(str(e)) from None
        if event.event_id != event_id or event.room_id != room_id:
            raise bad_json("The event does not match the path's room and event IDs")
        if event.type != MEMBER or event.membership != membership or event.state_key != event.sender:
            raise bad_json(f"Not a {membership} event of its sender")
        if get_domain(event.sender) != origin:
            raise forbidden(f"{origin} cannot send a membership event for {event.sender}")
        if membership == "join" and "join_authorised_via_users_server" in event.content:
            # Restricted join: our server vouches for it with its signature (the auth rules check it).
            authoriser = event.content["join_authorised_via_users_server"]
            if not isinstance(authoriser, str) or get_domain(authoriser) != self.hs.server_name:
                raise forbidden("join_authorised_via_users_server names a user of another server")
            finish = event.pdu
            from hs.events.signing import sign_event

            sign_event(finish, self.hs.server_name, self.hs.signing_key, rv)
        # Recorded before it is persisted: the federation senders, which follow the events stream,
        # then pass it on to the room's other servers (the joining server's own is the resident's job).
        await self.hs.federation_outbox.record_relay(event.event_id, origin)
        try:
            persisted = await handler.on_receive_pdu(origin, event.pdu)
        except PduRejected as e:
            raise forbidden(str(e)) from None
        if persisted is None:
            known = await self.store.get_event(event_id)
            if known is None or known.internal.outlier:
                raise forbidden("The event was not accepted into the room (soft-failed or rejected)")
            persisted = known
        return persisted

    async def send_join_response(self, event: Event) -> JsonDict:
        """The state before the join and the auth chain of it and the join (send_join v2's answer)."""
        state_ids = await self.store.get_state_group(event.internal.state_group_before)
        state = await self.store.get_events(list(state_ids.values()))
        chain_ids = await self.store.get_auth_chain_ids([*state_ids.values(), event.event_id])
        chain = await self.store.get_events(chain_ids)
        servers = sorted({get_domain(m) for m in await self.store.get_joined_members(event.room_id)})
        return {
            "origin": self.hs.server_name,
            "state": [federation_pdu(e) for e in state.values()],
            "auth_chain": [federation_pdu(e) for e in chain.values()],
            "event": federation_pdu(event),
            "members_omitted": False,
            "servers_in_room": servers,
        }

    async def send_knock_response(self, knock: Event) -> JsonDict:
        """send_knock's answer: the room's identifying state at the knock, as full PDUs (what invites
        carry, and what Synapse sends and checks), for the knocker's server to show its user."""
        state = await self.store.get_state_group(knock.internal.state_group_after)
        ids = [state[(t, "")] for t in INVITE_STATE_TYPES if (t, "") in state]
        found = await self.store.get_events(ids)
        return {"knock_room_state": [federation_pdu(found[i]) for i in ids if i in found]}

    async def _through_servers(self, action: str, room_id: str, servers: list[str],
                               attempt: Callable[[str], Awaitable[T]]) -> T:
        """Run a membership handshake with each of `servers` (ours and those
        `federation_domain_whitelist` excludes left out) until one takes it; a server that is down,
        refuses or answers nonsense is logged and the next asked. A MatrixError of our own (the
        answer checked and found wanting) ends it. Raises _NoServerTook when none did."""
        candidates = [s for s in dict.fromkeys(servers)
                      if s != self.hs.server_name and self.hs.config.federation_allowed(s)]
        last_error: Exception | None = None
        for server in candidates:
            try:
                return await attempt(server)
            except MatrixError:
                raise
            except Exception as e:
                logger.info("%s of %s via %s failed: %s", action, room_id, server, e)
                last_error = e
        raise _NoServerTook(candidates, last_error)

    # -- joining side ----------------------------------------------------------------------------------
    async def join_remote_room(self, user_id: str, room_id: str, servers: list[str],
                               content: JsonDict | None = None) -> str:
        """Join `user_id` (local) to a room on other servers, asking each of `servers` in turn. On a
        cluster the room's events writer does it (and persists the join); answered once seen here."""
        if not self.hs.events_stream.is_writer_for_room(room_id):
            from hs.replication.federation_calls import remote_membership

            await remote_membership(self.hs, "join", user_id, room_id, servers, content)
            return room_id
        try:
            return await self._through_servers("join", room_id, servers,
                                               lambda server: self._join_via(server, user_id, room_id, content or {}))
        except _NoServerTook as e:
            raise e.client_error("join", room_id) from None

    async def _join_via(self, server: str, user_id: str, room_id: str, content: JsonDict) -> str:
        template = await self.remote.make_membership(server, "join", room_id, user_id,
                                                     sorted(KNOWN_ROOM_VERSIONS, key=int))
        rv = KNOWN_ROOM_VERSIONS.get(template.room_version)
        if rv is None:
            raise incompatible_room_version(template.room_version)
        pdu = self._own_event(template.event, rv, room_id, user_id, "join", content)
        event = self._finish(pdu, rv)
        result = await self.remote.send_join(server, room_id, event.event_id, event.pdu)
        if result.event is not None and rv.restricted_join_rule:
            returned = Event(result.event, rv)
            if returned.event_id == event.event_id:
                event = returned  # with the resident server's signature (restricted joins)
        await self._create_remote_room(room_id, rv, result.state + result.auth_chain)
        handler = self.hs.federation_event_handler
        held = await handler.persist_outliers(server, result.state + result.auth_chain, rv, room_id)
        by_id = {ev.event_id: ev for ev in held}
        held_before = await self.store.get_events([p.get("event_id") or Event(p, rv).event_id
                                                   for p in result.state if isinstance(p, dict)])
        # (Only this room's: a resident server must not slip another room's event into the state.)
        by_id.update({eid: ev for eid, ev in held_before.items() if ev.room_id == room_id})
        state_before: dict[StateKey, str] = {}
        for p in result.state:
            try:
                eid = p["event_id"] if rv.event_format == EventFormat.V1 else Event(p, rv).event_id
            except Exception:
                continue
            ev = by_id.get(eid)
            if ev is not None and ev.state_key is not None and not ev.internal.rejected:
                state_before[ev.state_tuple] = eid
        if ("m.room.create", "") not in state_before:
            raise unavailable(f"{server} sent a room state without its create event")
        try:
            await handler.check_against_state(event, state_before)
        except AuthError as e:
            raise forbidden(f"The join is not allowed by the room's state: {e}") from None
        async with handler.room_locks.lock(room_id):
            if not await self.store.have_events([event.event_id]):
                # No local user was in the room: what we held of it (an invite, or heads from when we
                # were last in it) is superseded by the state the resident server sent.
                await self.hs.event_sender.persist_received(event, state_before, replace_heads=True)
        logger.info("%s joined %s via %s (%d state events)", user_id, room_id, server, len(state_before))
        return room_id

    def _own_event(self, template: Any, rv: RoomVersion, room_id: str, user_id: str, membership: str,
                   content: JsonDict) -> JsonDict:
        """The template checked (it must be our user's membership in that room) and made ours."""
        if not isinstance(template, dict):
            raise unavailable("The resident server's template is not an object")
        t_content = template.get("content")
        if (template.get("type") != MEMBER or template.get("state_key") != user_id
                or template.get("sender") != user_id or template.get("room_id") != room_id
                or not isinstance(t_content, dict) or t_content.get("membership") != membership):
            raise unavailable("The resident server's template is not this user's membership event")
        pdu = {k: v for k, v in template.items() if k not in _TEMPLATE_STRIPPED}
        pdu["content"] = {**t_content, **content, "membership": membership}
        pdu["origin_server_ts"] = now_ms()
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.hs.server_name
        if rv.event_format == EventFormat.V1:
            pdu["event_id"] = f"${random_string(18)}:{self.hs.server_name}"
        return pdu

    def _finish(self, pdu: JsonDict, rv: RoomVersion) -> Event:
        event_id = finish_local_event(pdu, self.hs.server_name, self.hs.signing_key, rv)
        return Event(pdu, rv, event_id=event_id)

    async def _create_remote_room(self, room_id: str, rv: RoomVersion, pdus: list[JsonDict]) -> None:
        creator = next((p.get("sender") for p in pdus if p.get("type") == "m.room.create"), None)
        await self.hs.room_store.insert_remote_room(room_id, rv.identifier, creator if isinstance(creator, str) else None)

    # -- knocking on a room on another server --------------------------------------------------------------
    async def knock_remote_room(self, user_id: str, room_id: str, servers: list[str],
                                content: JsonDict | None = None) -> Event:
        """Knock for `user_id` (local) on a room no local user is in, through make_knock/send_knock with
        each of `servers` in turn. The knock is kept here out of band (as a received invite is) with
        the room state the resident server sent, so the knocker's /sync lists it under `rooms.knock`.
        On a cluster the room's events writer does it."""
        if not self.hs.events_stream.is_writer_for_room(room_id):
            return await self._on_writer("knock", user_id, room_id, servers, content)
        try:
            return await self._through_servers("knock", room_id, servers,
                                               lambda server: self._knock_via(server, user_id, room_id, content or {}))
        except _NoServerTook as e:
            raise e.client_error("knock", room_id) from None

    async def _knock_via(self, server: str, user_id: str, room_id: str, content: JsonDict) -> Event:
        template = await self.remote.make_membership(server, "knock", room_id, user_id,
                                                     sorted(KNOWN_ROOM_VERSIONS, key=int))
        rv = KNOWN_ROOM_VERSIONS.get(template.room_version)
        if rv is None:
            raise incompatible_room_version(template.room_version)
        if not rv.knock_join_rule:
            raise forbidden(f"Room version {rv.identifier} does not support knocking")
        known = await self.hs.room_store.get_room_version(room_id)
        if known is not None and known.identifier != rv.identifier:
            raise unavailable(f"{server} offers room {room_id} as version {rv.identifier}, "
                              f"known here as {known.identifier}")
        pdu = self._own_event(template.event, rv, room_id, user_id, "knock", content)
        event = self._finish(pdu, rv)
        room_state = await self.remote.send_knock(server, room_id, event.event_id, event.pdu)
        # Only this room's entries (a full PDU names its room; a stripped event does not).
        stripped = _stripped_state([s for s in room_state if s.get("room_id", room_id) == room_id])
        stored = Event({**event.pdu, "unsigned": {**event.pdu.get("unsigned", {}), "knock_room_state": stripped}},
                       rv, event_id=event.event_id)
        creator = next((s.get("sender") for s in stripped if s.get("type") == "m.room.create"), None)
        handler = self.hs.federation_event_handler
        async with handler.room_locks.lock(room_id):
            if not await self.store.have_events([event.event_id]):
                await self.hs.room_store.insert_remote_room(room_id, rv.identifier,
                                                            creator if isinstance(creator, str) else None)
                # Out of band, as a received invite: the knock becomes the room's one head here.
                state_before = await self.store.get_current_state_ids(room_id)
                stored = await self.hs.event_sender.persist_received(stored, state_before, replace_heads=True)
        logger.info("%s knocked on %s via %s", user_id, room_id, server)
        return stored

    # -- invites, inviting side --------------------------------------------------------------------------
    async def co_sign_invite(self, event: Event) -> None:
        """EventSender's `before_persist` hook for an invite of another server's user: that server must
        co-sign the invite (v2 invite, carrying the room's stripped state) before it exists here. Its
        signature is added to the event; if it refuses, the invite fails with its error and nothing is
        persisted. The invitee's own server answers for the invitee, so their signature is checked."""
        invitee = event.state_key or ""
        destination = get_domain(invitee)
        rv = event.room_version
        if not self.hs.config.federation_allowed(destination):
            raise forbidden(f"Federation with {destination} is not allowed")
        stripped = await self.invite_room_state(event)
        try:
            # The room's lock is held meanwhile (the event is built on its heads): bounded tighter than
            # the client's default, so a server that does not answer holds up the room's sends less.
            async with asyncio.timeout(INVITE_TIMEOUT_S):
                signed = await self.remote.invite(destination, event.room_id, event.event_id,
                                                  federation_pdu(event), rv.identifier, stripped)
        except FederationError as e:
            raise remote_refusal(e, "invite", rv.identifier) from None
        except TimeoutError:
            raise unreachable(f"{destination} did not answer the invite within {INVITE_TIMEOUT_S:g} s") from None
        except Exception as e:  # a malformed answer
            raise unreachable(f"{destination} did not co-sign the invite: {e}") from None
        theirs = signed.get("signatures")
        theirs = theirs.get(destination) if isinstance(theirs, dict) else None
        if not isinstance(theirs, dict) or not theirs:
            raise unreachable(f"{destination} returned the invite without its signature")
        candidate = {**event.pdu, "signatures": {**event.pdu.get("signatures", {}), destination: theirs}}
        try:
            await self.hs.keyring.verify_json(destination, redact_shallow(candidate, rv), 0)
        except Exception as e:
            raise unreachable(f"{destination}'s signature on the invite does not verify: {e}") from None
        # Signatures are outside the event ID's hash: the event stays the one built and authorised.
        event.pdu["signatures"] = candidate["signatures"]

    async def invite_room_state(self, invite: Event) -> list[JsonDict]:
        """The stripped state an invitee's server shows its user: the room's identifying state and the
        inviter's membership, as it stands where the invite is built. The events go in full (PDUs hold
        a stripped event's fields): servers that check them against the room (Synapse) then can."""
        keys: list[StateKey] = [(t, "") for t in INVITE_STATE_TYPES] + [(MEMBER, invite.sender)]
        state = await self.store.get_current_state_events(invite.room_id, [(t, k) for t, k in keys])
        return [federation_pdu(state[key]) for key in keys if key in state]

    # -- invites, invitee's side -------------------------------------------------------------------------
    async def on_invite(self, origin: str, room_id: str, event_id: str, pdu: Any, room_version: str,
                        invite_room_state: Any) -> JsonDict:
        """An invite of one of our users to a room on `origin` (v1 and v2 invite): checked, co-signed with
        our key and returned. Unless a local user is in the room already (then the invite arrives again
        in a transaction like any event), it is persisted with its stripped state, so the invitee's
        /sync lists it under `rooms.invite`. On a cluster the room's events writer does it all."""
        await check_not_blocked(self.hs, room_id)  # an admin-blocked room: no invites into it
        if not self.hs.events_stream.is_writer_for_room(room_id):
            from hs.replication.federation_calls import forward_invite

            return await forward_invite(self.hs, origin, room_id, event_id, pdu, room_version, invite_room_state)
        rv = KNOWN_ROOM_VERSIONS.get(room_version)
        if rv is None:
            raise incompatible_room_version(room_version)
        if not isinstance(pdu, dict):
            raise bad_json("The invite event must be an object")
        try:
            parse_pdu(pdu, rv)
        except PduRejected as e:
            raise bad_json(f"Not an event of room version {rv.identifier}: {e}") from None
        if not check_content_hash(pdu):
            raise bad_json("The invite event's content hash does not match")
        try:
            event = await self.hs.federation_event_handler.checked_event(pdu, rv)
        except PduRejected as e:
            raise forbidden(f"The invite is not signed by its sender's server: {e}") from None
        if event.event_id != event_id or event.room_id != room_id:
            raise bad_json("The event does not match the path's room and event IDs")
        if event.type != MEMBER or event.membership != "invite" or not event.state_key:
            raise bad_json("Not an invite event")
        invitee = event.state_key
        if get_domain(invitee) != self.hs.server_name:
            raise bad_request("The invite event must be for this server")
        if get_domain(event.sender) != origin:
            raise forbidden(f"{origin} cannot send an invite from {event.sender}")
        if await self.hs.user_store.get_user(invitee) is None:
            raise not_found(f"Unknown user {invitee}")
        known = await self.hs.room_store.get_room_version(room_id)
        if known is not None and known.identifier != rv.identifier:
            raise bad_json(f"Room {room_id} is of version {known.identifier} here")
        signed = sign_event(dict(event.pdu), self.hs.server_name, self.hs.signing_key, rv)
        if not await self.hs.room_membership._must_join_remotely(room_id):
            return signed  # a room we are in: the invite comes in a transaction too
        stripped = _stripped_state(invite_room_state)
        stored = Event({**signed, "unsigned": {**signed.get("unsigned", {}), "invite_room_state": stripped}}, rv,
                       event_id=event.event_id)
        creator = next((s.get("sender") for s in stripped if s.get("type") == "m.room.create"), None)
        handler = self.hs.federation_event_handler
        async with handler.room_locks.lock(room_id):
            if not await self.store.have_events([event.event_id]):
                await self.hs.room_store.insert_remote_room(room_id, rv.identifier,
                                                            creator if isinstance(creator, str) else None)
                # Out of band: what we know of the room (other invites, or the state when we were last
                # in it) is the state before, and the invite the room's one head here.
                state_before = await self.store.get_current_state_ids(room_id)
                await self.hs.event_sender.persist_received(stored, state_before, replace_heads=True)
        logger.info("%s invited %s to %s (room version %s)", event.sender, invitee, room_id, rv.identifier)
        return signed

    async def _on_writer(self, action: str, user_id: str, room_id: str, servers: list[str],
                         content: JsonDict | None) -> Event:
        """A knock or leave through other servers, done by the room's events writer (over replication)."""
        from hs.replication.federation_calls import remote_membership

        event = await remote_membership(self.hs, action, user_id, room_id, servers, content)
        if event is None:
            raise unavailable(f"the room's writer did not answer the {action}'s event")
        return event

    # -- leaving a room we are not in (rejecting an invite, rescinding a knock) ------------------------------
    async def leave_remote_room(self, user_id: str, room_id: str, servers: list[str],
                                content: JsonDict | None = None) -> Event:
        """Leave `user_id` (local) from a room no local user is joined to, through make_leave/send_leave
        with each of `servers` in turn; the leave is then persisted here too. An invite none of them
        takes the leave for (gone, refusing) is rejected here alone, as Synapse does: the user can
        always be rid of an invite, though its room may still list them as invited. On a cluster the
        room's events writer does it."""
        if not self.hs.events_stream.is_writer_for_room(room_id):
            return await self._on_writer("leave", user_id, room_id, servers, content)
        try:
            return await self._through_servers("leave", room_id, servers,
                                               lambda server: self._leave_via(server, user_id, room_id, content or {}))
        except _NoServerTook as e:
            failure = e
        current = await self.store.get_membership(room_id, user_id)
        invite = await self.store.get_event(current[1]) if current is not None and current[0] == "invite" else None
        if invite is None:
            raise failure.client_error("leave", room_id) from None
        last_error = failure.last_error
        logger.info("rejecting the invite of %s to %s here alone (%s)", user_id, room_id, last_error)
        return await self._reject_locally(invite, content or {})

    async def _reject_locally(self, invite: Event, content: JsonDict) -> Event:
        """A leave built here on the invite alone (its one prev and auth event), persisted as the room's
        head and sent nowhere: no resident server could be asked to take it."""
        rv = invite.room_version
        user_id = invite.state_key or ""
        refs: list[Any] = [invite.event_id]
        if rv.event_format == EventFormat.V1:
            refs = [[invite.event_id, {"sha256": compute_content_hash(invite.pdu)}]]
        pdu: JsonDict = {
            "room_id": invite.room_id, "sender": user_id, "type": MEMBER, "state_key": user_id,
            "content": {**content, "membership": "leave"}, "depth": invite.depth + 1,
            "prev_events": refs, "auth_events": refs, "origin_server_ts": now_ms(),
        }
        if not rv.updated_redaction_rules:
            pdu["origin"] = self.hs.server_name
        if rv.event_format == EventFormat.V1:
            pdu["event_id"] = f"${random_string(18)}:{self.hs.server_name}"
        event = self._finish(pdu, rv)
        handler = self.hs.federation_event_handler
        async with handler.room_locks.lock(invite.room_id):
            state_before = await self.store.get_current_state_ids(invite.room_id)
            return await self.hs.event_sender.persist_received(event, state_before, replace_heads=True)

    async def _leave_via(self, server: str, user_id: str, room_id: str, content: JsonDict) -> Event:
        template = await self.remote.make_membership(server, "leave", room_id, user_id, [])
        rv = await self.hs.room_store.get_room_version(room_id) or KNOWN_ROOM_VERSIONS.get(template.room_version)
        if rv is None:
            raise incompatible_room_version(template.room_version)
        pdu = self._own_event(template.event, rv, room_id, user_id, "leave", content)
        event = self._finish(pdu, rv)
        await self.remote.send_leave(server, room_id, event.event_id, event.pdu)
        handler = self.hs.federation_event_handler
        async with handler.room_locks.lock(room_id):
            if not await self.store.have_events([event.event_id]):
                await self.hs.room_store.insert_remote_room(room_id, rv.identifier, None)
                state_before = await self.store.get_current_state_ids(room_id)
                event = await self.hs.event_sender.persist_received(event, state_before, replace_heads=True)
        logger.info("%s left %s via %s", user_id, room_id, server)
        return event


# How long the invitee's server has to co-sign an invite (the room's sends wait meanwhile).
INVITE_TIMEOUT_S = 20.0
# The state an invite carries for the invitee's server to show (besides the inviter's membership).
INVITE_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.canonical_alias",
                      "m.room.encryption", "m.room.topic")
MAX_INVITE_STATE = 50


def _stripped_state(value: Any) -> list[JsonDict]:
    """An invite's `invite_room_state` as stripped state events (type, state_key, sender, content);
    anything else in it is dropped."""
    out: list[JsonDict] = []
    for ev in value if isinstance(value, list) else []:
        if not isinstance(ev, dict):
            continue
        etype, state_key, sender, content = ev.get("type"), ev.get("state_key"), ev.get("sender"), ev.get("content")
        if isinstance(etype, str) and isinstance(state_key, str) and isinstance(sender, str) \
                and isinstance(content, dict):
            out.append({"type": etype, "state_key": state_key, "sender": sender, "content": content})
        if len(out) >= MAX_INVITE_STATE:
            break
    return out


class _NoServerTook(Exception):
    """No server took a membership handshake: the ones asked and the last failure."""

    def __init__(self, candidates: list[str], last_error: Exception | None) -> None:
        super().__init__(f"no server of {candidates} took it: {last_error}")
        self.candidates = candidates
        self.last_error = last_error

    def client_error(self, what: str, room_id: str) -> MatrixError:
        if not self.candidates:
            return not_found("No known servers")
        if isinstance(self.last_error, FederationError):
            return remote_refusal(self.last_error, what, None)
        return unreachable(f"Could not {what} {room_id} through any of {self.candidates}: {self.last_error}")


def remote_refusal(e: FederationError, what: str, room_version: str | None) -> MatrixError:
    """Another server's error answer to a membership request, as ours to the client."""
    msg = f"{e.destination} refused the {what}: {e.error}"
    if e.errcode == "M_INCOMPATIBLE_ROOM_VERSION" and room_version is not None:
        return incompatible_room_version(room_version)
    if e.status == 403:
        return forbidden(msg)
    if e.status == 404:
        return not_found(msg)
    if e.status is not None and 400 <= e.status < 500:
        return bad_request(msg)
    return unreachable(msg)
