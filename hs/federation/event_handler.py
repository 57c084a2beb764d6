"""Taking events from other servers into the room DAG: the spec's "Checks performed on receipt of a PDU".

For each PDU, in order:
1. It is a valid event of the room's version (shape, size), or it is dropped.
2. Its signatures verify (the sending server's, and for v1/v2 event IDs the ID's server's), or it is
   dropped. A wrong content hash keeps only the redacted form.
3. Its auth events are known (fetched from the sender if not), and it passes the auth rules against
   them, or it is *rejected*: stored so it is not fetched again, never served nor used for auth.
4. Its prev events are known (a gap is filled with `get_missing_events`, bounded); the state before it
   is the resolution of the states after its prev events (a prev still unknown: its state is asked
   of the sender with `state_ids`). It passes the auth rules against that state, or it is rejected.
5. It passes the auth rules against the room's current state, or it is *soft-failed*: stored, not
   shown to clients, not built upon.
Then `EventSender.persist_received` places it in the DAG.

Events fetched for state or auth chains go in as *outliers*, checked against their own auth events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from hs.events.auth import AuthError, auth_types_for_event, check_auth_events_selection, check_auth_rules
from hs.events.canonical_json import CanonicalJsonError
from hs.events.event import Event, JsonDict, StateKey
from hs.events.hashing import check_content_hash
from hs.events.redaction import redact_pdu
from hs.events.room_versions import EventFormat, RoomVersion
from hs.events.validation import EventTooLargeError, check_event_size
from hs.federation.acl import server_allowed
from hs.federation.remote import RemoteRooms
from hs.state.resolution import resolve_state
from hs.util import KeyedLocks

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

PDUS_RECEIVED = Counter("hs_federation_pdus_total", "PDUs received from other servers", ["outcome"])

# get_missing_events: how many events one gap fill may bring (Synapse asks for 10).
MISSING_EVENTS_LIMIT = 10
# Outliers fetched one by one for a state or auth chain before giving up on the event.
MAX_FETCHED_EVENTS = 2000
# How many rejected or soft-failed events in a row the state after a prev event is worked out through
# (from the state before them) before the sender is asked for it instead.
MAX_LOCAL_STATE_NESTING = 5
_REQUIRED_KEYS = ("type", "sender", "content", "depth", "prev_events", "auth_events", "origin_server_ts")


class PduRejected(Exception):
    """The PDU was dropped or rejected; the message says why (it goes into /send's per-PDU result)."""


def parse_pdu(pdu: Any, room_version: RoomVersion) -> Event:
    """A PDU as an Event of its room's version, or PduRejected naming what is wrong with its shape."""
    if not isinstance(pdu, dict):
        raise PduRejected("PDU is not an object")
    for key in _REQUIRED_KEYS:
        if key not in pdu:
            raise PduRejected(f"PDU has no '{key}'")
    if not isinstance(pdu["type"], str) or not isinstance(pdu["sender"], str):
        raise PduRejected("PDU type and sender must be strings")
    if not isinstance(pdu["content"], dict):
        raise PduRejected("PDU content must be an object")
    if not isinstance(pdu["depth"], int) or isinstance(pdu["depth"], bool) or not 0 <= pdu["depth"] < 2**63:
        raise PduRejected("PDU depth must be a non-negative integer")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise PduRejected("PDU state_key must be a string")
    for key in ("prev_events", "auth_events"):
        refs = pdu[key]
        if not isinstance(refs, list) or len(refs) > 20 and key == "prev_events" or len(refs) > 10 and key == "auth_events":
            raise PduRejected(f"PDU {key} must be a short list")
        for ref in refs:
            ok = isinstance(ref, str) if room_version.event_format != EventFormat.V1 else (
                isinstance(ref, list) and ref and isinstance(ref[0], str))
            if not ok:
                raise PduRejected(f"PDU {key} holds a malformed reference")
    try:
        check_event_size(pdu)
    except (EventTooLargeError, CanonicalJsonError) as e:
        raise PduRejected(str(e)) from None
    if room_version.event_format == EventFormat.V1 and not isinstance(pdu.get("event_id"), str):
        raise PduRejected("PDU has no event_id")
    try:
        return Event(pdu, room_version)
    except (CanonicalJsonError, KeyError, TypeError, ValueError) as e:
        raise PduRejected(f"PDU cannot be hashed: {e}") from None


def _closes_to_guests(event: Event) -> bool:
    """Whether the event sets the room's guest access to anything but `can_join`."""
    return (event.type == "m.room.guest_access" and event.state_key == ""
            and event.content.get("guest_access") != "can_join")


class FederationEventHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.remote = RemoteRooms(hs.federation_client)
        # One PDU at a time per room: gap filling and state computation see a settled DAG.
        self.room_locks = KeyedLocks()
        # Guests removed after a received guest_access change (`_after_persisted`), while they run.
        self._guest_kicks: set[asyncio.Task[None]] = set()

    # -- checks ----------------------------------------------------------------------------------------
    async def checked_event(self, pdu: Any, room_version: RoomVersion, parsed: Event | None = None) -> Event:
        """Steps 1 and 2: shape, signatures, content hash (a mismatch keeps the redacted form).
        `parsed`: the PDU already through `parse_pdu` (its event ID computed once)."""
        event = parsed if parsed is not None and parsed.pdu is pdu else parse_pdu(pdu, room_version)
        try:
            await self.hs.keyring.verify_event_signatures(event.pdu, room_version)
        except Exception as e:  # a signature that does not verify, or keys that cannot be had
            raise PduRejected(f"signature check failed: {e}") from None
        if not check_content_hash(event.pdu):
            logger.warning("event %s from %s: content hash mismatch, keeping the redacted form",
                           event.event_id, event.sender)
            event = Event(redact_pdu(event.pdu, room_version), room_version, event_id=event.event_id)
        return event

    async def _auth_map(self, event: Event, auth_events: Iterable[Event],
                        known: dict[str, Event] | None = None) -> dict[StateKey, Event]:
        """The event's cited auth events as a state map, plus the create event (v12 rooms do not cite
        it: its ID is the room ID's hash, found among `known` events or in the store)."""
        auth_map = {(e.type, e.state_key or ""): e for e in auth_events}
        if ("m.room.create", "") not in auth_map and event.type != "m.room.create":
            room_id = event.room_id
            create = (known or {}).get("$" + room_id[1:]) if ":" not in room_id else None
            if create is None:
                create = await self._create_event(room_id)
            if create is not None:
                auth_map[("m.room.create", "")] = create
        return auth_map

    async def _create_event(self, room_id: str) -> Event | None:
        if room_id.startswith("!") and ":" not in room_id:  # v12: the room ID is the create event's hash
            return await self.store.get_event("$" + room_id[1:])
        state = await self.store.get_current_state_ids(room_id)
        eid = state.get(("m.room.create", ""))
        return await self.store.get_event(eid) if eid else None

    async def check_against_auth_events(self, event: Event, known: dict[str, Event]) -> None:
        """Step 3's rule check: the cited auth events (all in `known`) are valid and allow the event."""
        cited = [known[a] for a in event.auth_event_ids if a in known]
        if len(cited) != len(event.auth_event_ids):
            raise AuthError("auth events are missing")
        rejected = [a.event_id for a in cited if a.internal.rejected]
        if rejected:
            raise AuthError(f"auth event {rejected[0]} was rejected")
        check_auth_events_selection(event, cited)
        check_auth_rules(event, await self._auth_map(event, cited, known))

    async def check_against_state(self, event: Event, state: dict[StateKey, str]) -> None:
        """The auth rules against a room state (the state before the event, or the current state)."""
        keys = auth_types_for_event(event.room_version, event.type, event.sender, event.state_key, event.content,
                                    for_checking=True)
        events = await self.store.get_events([state[k] for k in keys if k in state])
        check_auth_rules(event, await self._auth_map(event, [e for e in events.values() if not e.internal.rejected]))

    # -- receiving -------------------------------------------------------------------------------------
    async def on_receive_pdu(self, origin: str, pdu: Any, deferred: list[asyncio.Future[Event]] | None = None,
                             parsed: Event | None = None) -> Event | None:
        """Take one PDU of a transaction (or a send_join/leave/knock) into its room; raises PduRejected.

        Returns the event once persisted (None when it was already known). With `deferred`, an
        accepted event is returned once queued for persisting, its future added to `deferred`: a
        transaction's PDUs then commit together, and the caller waits for them all at the end."""
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        if not isinstance(room_id, str):
            raise PduRejected("PDU has no room_id")
        rv = await self.hs.room_store.get_room_version(room_id)
        if rv is None:
            raise PduRejected(f"this server is not in room {room_id}")
        if not self.hs.events_stream.is_writer_for_room(room_id):
            # Callers hand a room's PDUs to its writer (/send, send_join...: federation_calls); one
            # reaching a non-writer anyway (instances disagreeing about the writers) is refused plainly.
            logger.warning("PDU from %s in %s refused: this process (%s) does not persist that room's events",
                           origin, room_id, self.hs.instance_name)
            raise PduRejected("this instance does not persist that room's events")
        await self._check_acl(origin, room_id, rv)
        event = await self.checked_event(pdu, rv, parsed if parsed is not None and parsed.room_version is rv else None)
        async with self.room_locks.lock(room_id):
            if await self._settled(event):
                PDUS_RECEIVED.labels("known").inc()
                return None
            await self._fill_gap(origin, event)
            return await self._process(origin, event, deferred)

    async def _settled(self, event: Event) -> bool:
        """Whether the event needs nothing more here: in the timeline, or rejected or soft-failed. An
        event held only as a plain outlier (state or auth chain fetched earlier) that now arrives as a
        PDU of the room takes its place in the timeline (`event` is marked so the outlier row goes)."""
        held = (await self.store.get_events([event.event_id])).get(event.event_id)
        if held is None:
            return False
        meta = held.internal
        if meta.outlier and not meta.rejected and not meta.soft_failed:
            event.internal.outlier = True
            return False
        return True

    async def _check_acl(self, origin: str, room_id: str, rv: RoomVersion) -> None:
        """A server the room's ACL denies sends nothing into it (checked against the room's current
        state as its writer knows it, from memory)."""
        acl_id = (await self.hs.event_sender.current_state_ids(room_id, rv)).get(("m.room.server_acl", ""))
        acl = await self.store.get_event(acl_id) if acl_id is not None else None
        if acl is not None and not server_allowed(acl.content, origin):
            logger.warning("PDU from %s in %s refused: the room's server ACL denies it", origin, room_id)
            raise PduRejected(f"the server ACL of {room_id} denies {origin}")

    async def _fill_gap(self, origin: str, event: Event) -> None:
        """Fetch the events between our forward extremities and the event's unknown prev events."""
        missing = set(event.prev_event_ids) - await self.store.have_events(event.prev_event_ids)
        if not missing:
            return
        heads = await self.store.get_forward_extremities(event.room_id)
        head_events = await self.store.get_events(heads)
        min_depth = min((e.depth for e in head_events.values()), default=0)
        try:
            pdus = await self.remote.get_missing_events(origin, event.room_id, heads, [event.event_id],
                                                        MISSING_EVENTS_LIMIT, min_depth)
        except Exception as e:
            logger.info("get_missing_events from %s for %s failed: %s", origin, event.event_id, e)
            return
        fetched: list[Event] = []
        for pdu in pdus:
            try:
                fetched.append(await self.checked_event(pdu, event.room_version))
            except PduRejected as e:
                logger.info("missing event from %s dropped: %s", origin, e)
        for ev in sorted(fetched, key=lambda e: (e.depth, e.origin_server_ts)):
            if ev.room_id != event.room_id or await self._settled(ev):
                continue
            try:
                await self._process(origin, ev)
            except PduRejected as e:
                logger.info("missing event %s from %s: %s", ev.event_id, origin, e)

    async def _process(self, origin: str, event: Event,
                       deferred: list[asyncio.Future[Event]] | None = None) -> Event | None:
        room_id = event.room_id
        known = await self.ensure_auth_events(origin, event)
        try:
            await self.check_against_auth_events(event, known)
        except AuthError as e:
            await self._store_rejected(event, f"auth events: {e}")
            raise PduRejected(f"rejected: {e}") from None
        state_before, group_before = await self._state_before(origin, event)
        try:
            await self.check_against_state(event, state_before)
        except AuthError as e:
            await self._store_rejected(event, f"state before: {e}")
            raise PduRejected(f"rejected against the state before it: {e}") from None
        if self.hs.events_stream.is_writer_for_room(room_id):
            current = await self.hs.event_sender.current_state_ids(room_id, event.room_version)
        else:
            current = await self.store.get_current_state_ids(room_id)
        try:
            await self.check_against_state(event, current)
        except AuthError as e:
            logger.info("soft-failing %s in %s: %s", event.event_id, room_id, e)
            event.internal.soft_failed = True
            await self.hs.db.run_transaction("soft_failed", lambda c: self.store.insert_outliers(c, [event]))
            PDUS_RECEIVED.labels("soft_failed").inc()
            return None
        if deferred is not None:
            future = await self.hs.event_sender.queue_received(event, state_before, group_before)
            if _closes_to_guests(event):
                future.add_done_callback(
                    lambda f: None if f.cancelled() or f.exception() is not None else self._after_persisted(event))
            deferred.append(future)
            PDUS_RECEIVED.labels("accepted").inc()
            return event
        persisted = await self.hs.event_sender.persist_received(event, state_before, group_before)
        PDUS_RECEIVED.labels("accepted").inc()
        if persisted is not None and _closes_to_guests(persisted):
            self._after_persisted(persisted)
        return persisted

    def _after_persisted(self, event: Event) -> None:
        """A received `m.room.guest_access` that is not `can_join` is in the room: our guests must leave
        it, as after a local one (the spec's Guest Access module; hs/services/room_sending.py). Run here,
        on the room's writer that persisted it, once it is persisted (`kick_guests` reads the current
        state, so a change that lost state resolution removes nobody), in a task of its own: the leaves
        are local events of the same room, which must not wait behind the PDU being handled, nor it
        behind them. Rare (guest access changes), and cheap in a room without local guests: one read
        of its membership state."""
        task = asyncio.get_running_loop().create_task(self._kick_guests(event.room_id))
        self._guest_kicks.add(task)
        task.add_done_callback(self._guest_kicks.discard)

    async def _kick_guests(self, room_id: str) -> None:
        try:
            left = await self.hs.room_membership.kick_guests(room_id)
        except Exception:
            logger.exception("removing the guests of %s after its guest access changed failed", room_id)
            return
        if left:
            logger.info("guests %s left %s: its guest access no longer allows them", left, room_id)

    async def _store_rejected(self, event: Event, reason: str) -> None:
        logger.warning("rejected %s (%s from %s) in %s: %s", event.event_id, event.type, event.sender,
                       event.room_id, reason)
        PDUS_RECEIVED.labels("rejected").inc()
        await self.hs.db.run_transaction(
            "rejected_event", lambda c: self.store.insert_outliers(c, [event], {event.event_id: reason}))

    async def ensure_auth_events(self, origin: str, event: Event) -> dict[str, Event]:
        """The event's auth events, fetching those we lack (with their auth chains) as outliers."""
        known = await self.store.get_events(event.auth_event_ids)
        if len(known) == len(set(event.auth_event_ids)):
            return known
        try:
            chain = await self.remote.get_event_auth(origin, event.room_id, event.event_id)
        except Exception as e:
            raise PduRejected(f"its auth events are unknown and could not be fetched: {e}") from None
        await self.persist_outliers(origin, chain, event.room_version, event.room_id)
        return await self.store.get_events(event.auth_event_ids)

    async def _state_before(self, origin: str, event: Event, nesting: int = 0,
                            ) -> tuple[dict[StateKey, str], int | None]:
        """The state before the event: from its prev events' states, resolved. A prev we rejected or
        soft-failed has no state of its own here: the state after it is the state before it (the
        spec's Rejection), plus itself if soft-failed, worked out from its own prev events. A prev
        without a place here has its state asked of `origin`."""
        prevs = await self.store.get_events(event.prev_event_ids)
        states: list[dict[StateKey, str]] = []
        groups: list[int | None] = []
        for prev_id in dict.fromkeys(event.prev_event_ids):
            prev = prevs.get(prev_id)
            if prev is not None and not prev.internal.outlier and prev.internal.state_group_after is not None:
                groups.append(prev.internal.state_group_after)
                states.append(await self.store.get_state_group(prev.internal.state_group_after))
                continue
            if prev is not None and (prev.internal.rejected or prev.internal.soft_failed) \
                    and nesting < MAX_LOCAL_STATE_NESTING:
                try:
                    after, _ = await self._state_before(origin, prev, nesting + 1)
                except PduRejected as e:
                    logger.info("no state before %s (%s) here: %s", prev_id,
                                "rejected" if prev.internal.rejected else "soft-failed", e)
                else:
                    if not prev.internal.rejected and prev.state_key is not None:
                        after = {**after, prev.state_tuple: prev_id}
                    states.append(after)
                    groups.append(None)
                    continue
            states.append(await self._remote_state_after(origin, event, prev_id))
            groups.append(None)
        if not states:
            raise PduRejected("the event has no prev events")
        if len(states) == 1:
            return states[0], groups[0]
        resolved = await resolve_state(event.room_version, states, self.store.get_events,
                                       self.store.get_auth_chain_ids)
        return resolved, None

    async def _remote_state_after(self, origin: str, event: Event, prev_id: str) -> dict[StateKey, str]:
        """The state after `prev_id`, asked of `origin` (state_ids at it, plus the prev if a state event)."""
        try:
            state_ids, auth_ids = await self.remote.get_state_ids(origin, event.room_id, prev_id)
        except Exception as e:
            raise PduRejected(f"prev event {prev_id} is unknown and its state could not be had: {e}") from None
        wanted = list(dict.fromkeys([*state_ids, *auth_ids, prev_id]))
        have = await self.store.have_events(wanted)
        lacking = [eid for eid in wanted if eid not in have]
        if len(lacking) > MAX_FETCHED_EVENTS:
            raise PduRejected(f"the state at {prev_id} needs {len(lacking)} unknown events")
        pdus: list[JsonDict] = []
        for eid in lacking:
            try:
                pdus.append(await self.remote.get_event(origin, eid))
            except Exception as e:
                logger.info("fetching %s from %s failed: %s", eid, origin, e)
        await self.persist_outliers(origin, pdus, event.room_version, event.room_id)
        events = await self.store.get_events(wanted)
        state: dict[StateKey, str] = {}
        foreign: list[str] = []
        for eid in state_ids:
            ev = events.get(eid)
            if ev is not None and ev.room_id != event.room_id:  # held here, but of another room
                foreign.append(eid)
            elif ev is not None and ev.state_key is not None and not ev.internal.rejected:
                state[ev.state_tuple] = eid
        if foreign:
            logger.warning("state at %s from %s names events of other rooms, left out: %s", prev_id, origin,
                           ", ".join(foreign[:5]))
        prev = events.get(prev_id)
        if prev is not None and prev.room_id == event.room_id and prev.state_key is not None \
                and not prev.internal.rejected:
            state[prev.state_tuple] = prev_id
        return state

    async def persist_outliers(self, origin: str, pdus: list[JsonDict], room_version: RoomVersion,
                               room_id: str) -> list[Event]:
        """Check and store events without a place in the timeline (state, auth chains): signatures,
        hashes, then the auth rules against their own auth events, in auth order; the failures are
        stored as rejected. Returns the events (rejected ones included) now held."""
        events: dict[str, Event] = {}
        for pdu in pdus:
            try:
                ev = await self.checked_event(pdu, room_version)
            except PduRejected as e:
                logger.info("outlier from %s dropped: %s", origin, e)
                continue
            if ev.room_id != room_id:
                logger.info("outlier %s from %s is of another room", ev.event_id, origin)
                continue
            events[ev.event_id] = ev
        have = await self.store.have_events(list(events))
        todo = {eid: ev for eid, ev in events.items() if eid not in have}
        rejected: dict[str, str] = {}
        done: dict[str, Event] = dict(await self.store.get_events([a for ev in todo.values() for a in ev.auth_event_ids]))
        # Auth order: an event after every auth event it cites (they are in the batch or held).
        pending = dict(todo)
        ordered: list[Event] = []
        while pending:
            ready = [ev for ev in pending.values() if all(a in done or a not in pending for a in ev.auth_event_ids)]
            if not ready:  # a cycle: reject the rest
                for ev in pending.values():
                    rejected[ev.event_id] = "auth events form a cycle"
                    ordered.append(ev)
                break
            for ev in sorted(ready, key=lambda e: (e.depth, e.event_id)):
                del pending[ev.event_id]
                try:
                    await self.check_against_auth_events(ev, done)
                except AuthError as e:
                    rejected[ev.event_id] = str(e)
                    ev.internal.rejected = True
                done[ev.event_id] = ev
                ordered.append(ev)
        if ordered:
            for ev in ordered:
                if ev.event_id in rejected:
                    logger.warning("outlier %s from %s rejected: %s", ev.event_id, origin, rejected[ev.event_id])
            await self.hs.db.run_transaction("outliers", lambda c: self.store.insert_outliers(c, ordered, rejected))
            for ev in ordered:
                self.store.cache_event(ev)
        return ordered
