"""Building, authorising and persisting local events: the write path of the events stream.

Everything that changes a room goes through `EventSender`, on the room's event persister, under a
per-room lock and through one queue per room, so that the room's forward extremities (its "heads") are
known in memory exactly. A local event's prev_events are the heads (up to MAX_PREV_EVENTS); with one
head (every room no other server writes to) its state before is the head's state after, the fast path;
with several, the heads' states are resolved (state resolution v2/v2.1) into a new state group.
Events from other servers (`persist_received`, after hs/federation/ checked them) join the same queue:
their prev events stop being heads, they become one, and the room's current state moves to the
resolution of the new heads' states.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from hs.db.stores.event_batch import (
    PlainRow,
    complete_batches,
    fits_one_statement,
    persist_plain_events,
    persist_rest,
)
from hs.db.stores.push import PushRow, SummaryRow, local_joins
from hs.db.stores.rooms import AliasTaken, NewRoom, RoomIdTaken
from hs.db.stores.stream_positions import StreamPositionStore
from hs.errors import MatrixError, bad_json, forbidden, internal_error, not_found, room_in_use, too_large
from hs.events.auth import AuthError, auth_types_for_event, check_auth_rules, get_domain, get_user_power_level
from hs.events.canonical_json import CanonicalJsonError
from hs.events.event import Event, JsonDict, StateKey
from hs.events.hashing import compute_content_hash
from hs.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat, RoomVersion
from hs.events.signing import finish_local_event
from hs.events.validation import EventTooLargeError, check_event_size
from hs.metrics import observe_persisted
from hs.services.auth import massaged_ts
from hs.services.push_evaluator import evaluate_push
from hs.state.resolution import resolve_state
from hs.util import KeyedLocks, LruCache, now_ms, random_string

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.new_room import InitialEvent
    from hs.services.push_rules import BulkPushEvaluator

logger = logging.getLogger(__name__)
EVENTS_PERSISTED = Counter("hs_events_persisted_total", "Events persisted by this process")


def _origin_server_ts() -> int:
    """Now, or the timestamp an application service gave its PUT /send or /state (`ts`, timestamp
    massaging: the event's place in the room is still at its end; only the time shown changes)."""
    massaged = massaged_ts()
    return now_ms() if massaged is None else massaged


class EventSender:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = hs.event_store
        self.locks = KeyedLocks()  # per room
        # The latest event built for each room: the next event's prev_event. Only the room's writer
        # changes it (under the room lock), so the cache cannot go stale; it is dropped if a
        # persist fails, so the next build starts again from the database.
        self._heads: dict[str, list[Event]] = {}
        # Built events waiting to be persisted, per room; one drain task per room commits them in
        # batches (group commit: one transaction, one fsync, for everything that queued up).
        self._queues: dict[str, list[_Pending]] = {}
        self._draining: set[str] = set()
        # Transaction IDs being persisted or persisted recently, so a retry that races the first
        # request is answered with the same event.
        self._txns: LruCache[tuple[str, str, str, str], asyncio.Future[Event]] = LruCache(20000, name="services.events.self._txns")
        # Push rule evaluation: run on each batch (positions assigned); its rows (notifications,
        # unread counts) commit with the events, or just after them (`_persist_events_first`).
        self.push_evaluator: BulkPushEvaluator | None = None
        # Evaluating a small batch's push rules in a thread of its own lets it run while the event
        # loop's thread waits for the database: on few cores the database's backend is otherwise
        # scheduled onto the loop's core and the two take turns.
        self._push_thread = ThreadPoolExecutor(1, thread_name_prefix="push-eval")
        # First positions of batches whose notifications follow their events and are not stored yet.
        self._unnotified: set[int] = set()
        # Each room's latest second statement (`_persist_rest`); it waits for the room's one before.
        self._rests: dict[str, asyncio.Task[None]] = {}
        # Per room, the events that received redactions wait for (loaded on first use; see _late_redaction).
        self._redaction_targets: dict[str, set[str]] = {}
        # The origin_server_ts of the latest create event built here: each is later than the one before.
        self._last_create_ts = 0

    async def room_version(self, room_id: str) -> RoomVersion:
        vid = await self.hs.room_store.get_room_version_id(room_id)
        if vid is None:
            raise not_found(f"Unknown room {room_id}")
        return KNOWN_ROOM_VERSIONS[vid]

    async def send(self, room_id: str, sender: str, etype: str, content: JsonDict,
                   state_key: str | None = None, txn: tuple[str, str, str] | None = None,
                   redacts: str | None = None, room_version: RoomVersion | None = None,
                   txn_checked: bool = False,
                   before_persist: Callable[[Event], Awaitable[None]] | None = None) -> Event:
        """Create, authorise and persist one event; with `txn` (user, device, txn_id) it is idempotent.

        `txn_checked` says the caller already looked the transaction up in the database (after which
        only a concurrent duplicate is possible, and the in-memory map catches that).

        `before_persist` runs on the built event before it is queued, under the room lock (so the event
        stays built on the room's heads): it may add signatures (a remote invitee's server co-signs an
        invite; the event ID does not cover signatures), and if it raises nothing is persisted. Only
        the room's writer can run it: elsewhere the one hook there is (co-signing a remote invite) is
        named in the call to the writer.
        """
        if not self.hs.events_stream.is_writer_for_room(room_id):
            co_sign = before_persist is not None and before_persist == self.hs.federation_membership.co_sign_invite
            if before_persist is not None and not co_sign:
                raise internal_error(f"{self.hs.instance_name} does not write events for {room_id}")
            return await self.hs.replication_client.send_event(
                room_id, sender, etype, content, state_key, txn, redacts, co_sign_invite=co_sign)
        txn_key = (txn[0], txn[1], room_id, txn[2]) if txn is not None else None
        if txn is not None and txn_key is not None and not txn_checked and txn_key not in self._txns:
            existing = await self.store.get_event_id_for_txn(txn[0], txn[1], room_id, txn[2])
            if existing is not None:
                ev = await self.store.get_event(existing)
                assert ev is not None
                return ev
        async with self.locks.lock(room_id):
            if txn_key is not None:
                pending_txn = self._txns.get(txn_key)
                if pending_txn is not None:
                    return await asyncio.shield(pending_txn)
            rv = room_version or await self.room_version(room_id)
            event, group_before, state_before, groups = await self._build(
                rv, room_id, sender, etype, content, state_key, redacts)
            if before_persist is not None:
                await before_persist(event)
            future = await self._enqueue(event, group_before, state_before, txn, groups)
            if txn_key is not None:
                self._txns.set(txn_key, future)
        return await asyncio.shield(future)

    async def template(self, room_id: str, sender: str, etype: str, content: JsonDict, state_key: str | None,
                       rv: RoomVersion) -> JsonDict:
        """An event as this server would build it now, unsigned and not persisted: make_join's
        template for another server's user (who signs it). Refused as a local send would be."""
        async with self.locks.lock(room_id):
            event, _, _, _ = await self._build(rv, room_id, sender, etype, content, state_key, None)
        return {k: v for k, v in event.pdu.items() if k not in ("signatures", "hashes", "unsigned", "event_id")}

    def build_create_event(self, rv: RoomVersion, sender: str, content: JsonDict, room_id: str | None,
                           after_ts: int | None = None) -> Event:
        """The m.room.create event of a new room (v12: it defines the room ID), not persisted.

        Its origin_server_ts is later than any other create event's built by this process (and than
        `after_ts`, a retry after a collision): a v12 room ID is the create event's hash, so one user's
        two rooms created with the same content in the same millisecond would otherwise be one.
        """
        ts = max(now_ms(), self._last_create_ts + 1, (after_ts or 0) + 1)
        self._last_create_ts = ts
        pdu: JsonDict = {
            "type": "m.room.create", "state_key": "", "sender": sender, "content": content,
            "depth": 1, "prev_events": [], "auth_events": [], "origin_server_ts": ts,
        }
        if not rv.room_id_from_create_event:
            assert room_id is not None
            pdu["room_id"] = room_id
        event = self._finish(rv, pdu)
        try:
            check_auth_rules(event, {})
        except AuthError as e:
            raise forbidden(str(e)) from None
        return event

    async def persist_new_room(self, create: Event, initial: list[InitialEvent], room: NewRoom) -> list[Event]:
        """Build a new room's events on this (its) writer and persist them with the room's rows in one
        transaction: all of them or, if any is refused or the transaction fails, none (see
        hs/services/new_room.py). Raises RoomIdTaken if the room exists already."""
        room_id = create.room_id
        rv = create.room_version
        async with self.locks.lock(room_id):
            if room_id in self._heads or await self.hs.room_store.get_room_version_id(room_id) is not None:
                raise RoomIdTaken(room_id)
            batch = [await self._stage(create, None, {}, None)]
            try:
                # Each event is built on the one before, from the heads, state groups and events cached
                # as they are staged (as queued events are), so nothing is read from the database.
                for item in initial:
                    try:
                        event, group_before, state_before, _ = await self._build(
                            rv, room_id, item.sender, item.type, item.content, item.state_key, None)
                    except MatrixError as e:
                        if not item.optional:
                            raise
                        logger.warning("new room %s: leaving out %s/%s: %s", room_id, item.type, item.state_key,
                                       e.msg)
                        continue
                    batch.append(await self._stage(event, group_before, state_before, None))
                batch[0].new_room = room
                try:
                    await self._persist_batch(room_id, batch)
                except AliasTaken:
                    raise room_in_use("Room alias already taken") from None
            except BaseException:
                self._heads.pop(room_id, None)
                for p in batch:
                    self.store.invalidate_event(p.event.event_id)
                raise
            self.hs.room_store.note_new_room(room_id, rv.identifier)
        return [p.event for p in batch]

    # -- building --------------------------------------------------------------------------------------
    def _finish(self, rv: RoomVersion, pdu: JsonDict) -> Event:
        """Add origin, IDs (v1/v2), content hash and signature; wrap as an Event."""
        server = self.hs.server_name
        if not rv.updated_redaction_rules:
            pdu["origin"] = server
        if rv.event_format == EventFormat.V1:
            pdu["event_id"] = f"${random_string(18)}:{server}"
        try:
            event_id = finish_local_event(pdu, server, self.hs.signing_key, rv)
        except CanonicalJsonError as e:
            raise bad_json(str(e)) from None
        event = Event(pdu, rv, event_id=event_id)
        try:
            check_event_size(event.pdu, floats_checked=True)
        except EventTooLargeError as e:
            raise too_large(str(e)) from None
        return event

    async def _load_heads(self, room_id: str) -> list[Event]:
        """The room's forward extremities: from memory, or (first use, after a failure) the database.
        Only the room's writer keeps them in memory (it alone moves them); another process (a make_join
        template on a federation reader) reads them fresh each time."""
        heads = self._heads.get(room_id)
        if heads is None:
            await self.hs.push_store.pending.settled(room_id)  # the stored extremity
            prev_ids = await self.store.get_forward_extremities(room_id)
            heads = list((await self.store.get_events(prev_ids)).values())
            if heads and self.hs.events_stream.is_writer_for_room(room_id):
                self._heads[room_id] = heads
        return heads

    async def _resolve_heads(self, rv: RoomVersion, heads: list[Event]) -> dict[StateKey, str]:
        """The room state after `heads`: the one head's state after, or the resolution of theirs."""
        if len(heads) == 1:
            return await self.store.get_state_group(heads[0].internal.state_group_after)
        states = [await self.store.get_state_group(h.internal.state_group_after) for h in heads]
        return await resolve_state(rv, states, self.store.get_events, self.store.get_auth_chain_ids)

    async def _new_group(self, room_id: str, base: int | None, full: dict[StateKey, str]) -> _NewGroup:
        """A state group for a state no event has after it yet (a resolution, or a remote event's
        state before), stored as a delta from `base` with the batch that first uses it."""
        base_state = await self.store.get_state_group(base) if base is not None else {}
        delta = {k: v for k, v in full.items() if base_state.get(k) != v}
        removed = [k for k in base_state if k not in full]
        if removed:  # a delta cannot remove entries: store it whole
            base, delta = None, dict(full)
        group = _NewGroup(await self.hs.state_group_ids.next(), room_id, base, delta, dict(full))
        self.store.cache_state_group(group.id, full)
        return group

    async def _build(self, rv: RoomVersion, room_id: str, sender: str, etype: str, content: JsonDict,
                     state_key: str | None, redacts: str | None,
                     ) -> tuple[Event, int | None, dict[StateKey, str], list[_NewGroup]]:
        prevs = await self._load_heads(room_id)
        if not prevs:
            raise not_found(f"Unknown room {room_id}")
        groups: list[_NewGroup] = []
        if len(prevs) == 1:
            # The fast path (a room only this server writes to): the state before the new event is
            # the state after the one head.
            group_before = prevs[0].internal.state_group_after
            state_before = await self.store.get_state_group(group_before)
        else:
            prevs = sorted(prevs, key=lambda e: (e.depth, e.event_id), reverse=True)[:MAX_PREV_EVENTS]
            state_before = await self._resolve_heads(rv, prevs)
            group = await self._new_group(room_id, prevs[0].internal.state_group_after, state_before)
            groups.append(group)
            group_before = group.id
        depth = max(p.depth for p in prevs) + 1
        auth_keys = auth_types_for_event(rv, etype, sender, state_key, content)
        auth_ids = [state_before[k] for k in sorted(auth_keys) if k in state_before]
        auth_events = await self.store.get_events(auth_ids + [state_before[("m.room.create", "")]])
        if rv.event_format == EventFormat.V1:
            prev_refs: list[Any] = [[p.event_id, {"sha256": compute_content_hash(p.pdu)}] for p in prevs]
            auth_refs: list[Any] = [[a, {"sha256": compute_content_hash(auth_events[a].pdu)}] for a in auth_ids]
        else:
            prev_refs, auth_refs = [p.event_id for p in prevs], auth_ids
        pdu: JsonDict = {
            "room_id": room_id, "sender": sender, "type": etype, "content": content, "depth": depth,
            "prev_events": prev_refs, "auth_events": auth_refs, "origin_server_ts": _origin_server_ts(),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            if rv.updated_redaction_rules:
                pdu["content"] = {**content, "redacts": redacts}
            else:
                pdu["redacts"] = redacts
        event = self._finish(rv, pdu)
        auth_map = {(e.type, e.state_key or ""): e for e in auth_events.values()}
        try:
            check_auth_rules(event, auth_map)
        except AuthError as e:
            raise forbidden(str(e)) from None
        if etype == "m.room.redaction" and redacts is not None:
            await self._check_redaction_allowed(event, redacts, auth_map)
        if state_key is not None and (etype, state_key) in state_before:
            prev = await self.store.get_event(state_before[(etype, state_key)])
            if prev is not None:
                event.pdu["unsigned"] = {"replaces_state": prev.event_id, "prev_content": prev.content,
                                         "prev_sender": prev.sender}
        return event, group_before, state_before, groups

    async def _check_redaction_allowed(self, event: Event, redacts: str, auth_map: dict[StateKey, Event]) -> None:
        """From room v3 the auth rules defer redaction checks to the server that sees the target."""
        target = await self.store.get_event(redacts)
        if target is not None and target.room_id != event.room_id:
            raise not_found("Event not found")
        if target is not None and target.sender == event.sender:
            return
        pl = auth_map.get(("m.room.power_levels", ""))
        redact_level = int(pl.content.get("redact", 50)) if pl is not None else 50
        if get_user_power_level(event.sender, auth_map, event.room_version) < redact_level:
            raise forbidden("You don't have permission to redact this event")

    # -- persisting --------------------------------------------------------------------------------------
    async def _enqueue(self, event: Event, group_before: int | None, state_before: dict[StateKey, str],
                       txn: tuple[str, str, str] | None, groups: list[_NewGroup] | None = None,
                       ) -> asyncio.Future[Event]:
        """Queue a built event for its room's drain task; the event becomes the room's head at once
        (with the heads it does not cite, beyond MAX_PREV_EVENTS: the next event cites them). Called
        under the room lock."""
        heads = None
        if groups:
            cited = set(event.prev_event_ids)
            heads = [h for h in self._heads.get(event.room_id, []) if h.event_id not in cited] + [event]
        pending = await self._stage(event, group_before, state_before, txn, heads)
        if groups:
            pending.groups = groups
            pending.prev_ids = event.prev_event_ids
        self._queue(pending)
        return pending.future

    def _queue(self, pending: _Pending) -> None:
        event = pending.event
        self._queues.setdefault(event.room_id, []).append(pending)
        if event.room_id not in self._draining:
            self._draining.add(event.room_id)
            asyncio.get_running_loop().create_task(self._drain(event.room_id))

    async def persist_received(self, event: Event, state_before: dict[StateKey, str],
                               group_before: int | None = None, replace_heads: bool = False) -> Event:
        """`queue_received`, then wait until the event is persisted."""
        future = await self.queue_received(event, state_before, group_before, replace_heads)
        return await asyncio.shield(future)

    async def queue_received(self, event: Event, state_before: dict[StateKey, str],
                             group_before: int | None = None, replace_heads: bool = False,
                             ) -> asyncio.Future[Event]:
        """Persist an event from another server that hs/federation/ has checked (signatures, hashes,
        auth against its auth events and against `state_before`, the state at its prev events): it
        joins the room's queue behind the local events built so far, its prev events stop being heads
        and it becomes one, and the room's current state becomes the resolution of the heads' states.

        `group_before` is a stored group holding exactly `state_before`, when the caller knows one (the
        state after its only prev event); otherwise a new group is made.

        `replace_heads`: the event becomes the room's only head, and the state after it its current state
        (a membership of a room no local user is joined to: an invite, the leave rejecting it, a join
        through another server, where our old heads are stale or out of band)."""
        room_id = event.room_id
        rv = event.room_version
        async with self.locks.lock(room_id):
            heads = await self._load_heads(room_id)
            current_before = await self._resolve_heads(rv, heads) if heads else {}
            groups: list[_NewGroup] = []
            if group_before is None:
                base = next((h.internal.state_group_after for h in heads
                             if h.event_id in event.prev_event_ids), None)
                group = await self._new_group(room_id, base, state_before)
                groups.append(group)
                group_before = group.id
            prev_ids = set(event.prev_event_ids)
            # An event arriving after a child of it (the child came first, its prev bridged with the
            # sender's state) is no forward extremity: the child already extends it.
            has_child = not replace_heads and any(event.event_id in h.prev_event_ids for h in heads)
            new_heads = [h for h in heads if h.event_id not in prev_ids and not replace_heads]
            if not has_child:
                new_heads.append(event)
            pending = await self._stage(event, group_before, state_before, None, new_heads)
            pending.groups = groups
            pending.prev_ids = event.prev_event_ids + ([h.event_id for h in heads] if replace_heads else [])
            pending.becomes_head = not has_child
            pending.was_outlier = event.internal.outlier
            pending.redaction_applies = await self.received_redaction_applies(event, state_before)
            if event.type == "m.room.redaction" and event.redacts and not await self.store.have_events([event.redacts]):
                pending.redacts_later = event.redacts
                (await self._pending_redaction_targets(room_id)).add(event.redacts)
            pending.redacted_by = await self._late_redaction(event)
            event.internal.outlier = False
            state_after = pending.full_after if pending.full_after is not None else state_before
            current_after = state_after if new_heads == [event] else await self._resolve_heads(rv, new_heads)
            pending.current_delta = await self._state_delta(current_before, current_after)
            self._queue(pending)
        # Staged: the room's next events (local or received) build on it before it commits, and the
        # events queued meanwhile commit together.
        return pending.future

    async def current_state_ids(self, room_id: str, rv: RoomVersion) -> dict[StateKey, str]:
        """The room's current state as its writer knows it: the resolution of its heads' states, the
        events still queued for persisting included (the database's current state lags behind them).
        What an event from another server is checked against for soft failure."""
        async with self.locks.lock(room_id):
            heads = await self._load_heads(room_id)
            return await self._resolve_heads(rv, heads) if heads else {}

    async def received_redaction_applies(self, event: Event, state_before: dict[StateKey, str]) -> bool:
        """Whether a redaction from another server takes effect here. From room v3 the auth rules let
        anyone redact anything, leaving it to the receiver to apply a redaction only when its sender is
        of the target's server or has the power to redact in the state before it (v1/v2 rooms: the
        auth rules checked this). A target not held yet: nothing to apply now (`_late_redaction`
        applies it when the target arrives)."""
        if event.type != "m.room.redaction" or not event.redacts or event.room_version.event_format == EventFormat.V1:
            return True
        target = await self.store.get_event(event.redacts)
        if target is None:
            return True
        return await self._may_redact(event, target, state_before)

    async def _pending_redaction_targets(self, room_id: str) -> set[str]:
        """The room's events that received redactions wait for: read once per room (most events have
        none waiting for them), then kept up to date here, on the room's writer."""
        targets = self._redaction_targets.get(room_id)
        if targets is None:
            targets = self._redaction_targets[room_id] = await self.store.get_pending_redaction_targets(room_id)
        return targets

    async def _late_redaction(self, event: Event) -> str | None:
        """A redaction received before `event` (stored waiting for it) that may redact it."""
        targets = await self._pending_redaction_targets(event.room_id)
        if event.event_id not in targets:
            return None
        targets.discard(event.event_id)
        for redaction_id in await self.store.get_pending_redactions(event.event_id):
            redaction = await self.store.get_event(redaction_id)
            if redaction is None or redaction.room_id != event.room_id:
                continue
            state = await self.store.get_state_group(redaction.internal.state_group_before)
            if await self._may_redact(redaction, event, state):
                return redaction_id
        return None

    async def _may_redact(self, event: Event, target: Event, state_before: dict[StateKey, str]) -> bool:
        if get_domain(target.sender) == get_domain(event.sender):
            return True
        keys = [("m.room.create", ""), ("m.room.power_levels", "")]
        auth = await self.store.get_events([state_before[k] for k in keys if k in state_before])
        auth_map = {(e.type, e.state_key or ""): e for e in auth.values()}
        pl = auth_map.get(("m.room.power_levels", ""))
        redact_level = pl.content.get("redact", 50) if pl is not None else 50
        if not isinstance(redact_level, int) or isinstance(redact_level, bool):
            redact_level = 50
        if get_user_power_level(event.sender, auth_map, event.room_version) >= redact_level:
            return True
        logger.info("redaction %s of %s by %s in %s is not applied: another server's event, no power to redact",
                    event.event_id, target.event_id, event.sender, event.room_id)
        return False

    async def _state_delta(self, before: dict[StateKey, str], after: dict[StateKey, str],
                           ) -> list[tuple[str, str, str | None, str | None]]:
        """The rows that move current state from `before` to `after` (type, state key, event ID or None,
        membership)."""
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        events = await self.store.get_events(list(changed.values()))
        delta: list[tuple[str, str, str | None, str | None]] = [
            (k[0], k[1], v, events[v].membership if v in events else None) for k, v in changed.items()]
        delta.extend((k[0], k[1], None, None) for k in before if k not in after)
        return delta

    async def _stage(self, event: Event, group_before: int | None, state_before: dict[StateKey, str],
                     txn: tuple[str, str, str] | None, heads: list[Event] | None = None) -> _Pending:
        """Make a built event the room's head, to be persisted. Called under the room lock.

        A state event gets its state group ID now, and the group's full state and the event go into
        the caches, so the next event can be built on (and authorised against) it before either is
        committed.
        """
        pending = _Pending(event, group_before, txn)
        group_after = group_before
        if event.is_state():
            pending.full_after = {**state_before, event.state_tuple: event.event_id}
            pending.new_group = group_after = await self.hs.state_group_ids.next()
            self.store.cache_state_group(group_after, pending.full_after)
        event.internal.state_group_before = group_before
        event.internal.state_group_after = group_after
        self._heads[event.room_id] = heads if heads is not None else [event]
        # The events built next find it as an auth event or a state entry while it waits in the
        # queue (a batch may be in flight before it); a failed batch drops it again (`_fail_room`).
        self.store.cache_event(event)
        return pending

    async def _drain(self, room_id: str) -> None:
        try:
            while self._queues.get(room_id):
                batch = self._queues[room_id][:MAX_BATCH]
                del self._queues[room_id][:len(batch)]
                try:
                    await self._persist_batch(room_id, batch)
                except Exception as exc:
                    logger.exception("persisting %d event(s) in %s failed", len(batch), room_id)
                    await self._fail_room(room_id, batch, exc)
        finally:
            self._draining.discard(room_id)
            if not self._queues.get(room_id):
                self._queues.pop(room_id, None)

    async def _fail_room(self, room_id: str, batch: list[_Pending], exc: Exception) -> None:
        """Events queued after a failed one were built on it, so they fail too; the head is rebuilt."""
        async with self.locks.lock(room_id):
            failed = batch + self._queues.pop(room_id, [])
            self._heads.pop(room_id, None)
        err = internal_error("Failed to persist event")
        for p in failed:
            self.store.invalidate_event(p.event.event_id)
            if p.txn is not None:
                self._txns.pop((p.txn[0], p.txn[1], room_id, p.txn[2]))
            if not p.future.done():
                p.future.set_exception(err)
                p.future.exception()  # mark retrieved: a caller may have gone away

    async def _persist_batch(self, room_id: str, batch: list[_Pending]) -> None:
        stream = self.hs.events_stream
        assert stream.tracker is not None, "only an events writer persists events"
        tracker = stream.tracker
        push_store = self.hs.push_store
        rest: tuple[list[PlainRow], list[PushRow]] | None = None  # to store once the events are out
        joins: list[str] = []  # local users joining: their unread counts are recounted
        async with tracker.allocate_many(len(batch)) as positions:
            for p, pos in zip(batch, positions, strict=True):
                p.event.internal.stream_ordering = pos
                # Push evaluation reads room state, which may name events of this very batch (dropped
                # from the cache on failure).
                self.store.cache_event(p.event)
            events = [p.event for p in batch]
            redacted = [p.event.redacts for p in batch
                        if p.event.type == "m.room.redaction" and p.event.redacts and p.redaction_applies]
            own_position = tracker.persisted_if_committed(positions) if len(stream.writers) > 1 else None
            if self.hs.db.engine == "postgres" and fits_one_statement(events) and all(p.linear for p in batch):
                rows = [(p.event, pos, p.txn) for p, pos in zip(batch, positions, strict=True)]
                if self._defer_notifications():
                    rest = (rows, await self._persist_events_first(room_id, rows, positions))
                    counts: list[SummaryRow] = []
                else:
                    push_rows = await self._push_rows(events)
                    async with push_store.count_locks.lock(room_id):
                        counts = await persist_plain_events(self.hs.db, room_id, self.hs.instance_name, rows,
                                                            push_rows, own_position)
            else:
                # The room's earlier batches complete first: this one moves the extremity on from
                # theirs, and a redaction recounts from their notifications.
                await push_store.pending.settled(room_id)
                push_rows = await self._push_rows(events)
                joins = local_joins(events, self.hs.server_name)
                async with push_store.count_locks.lock(room_id):
                    counts = await self.hs.db.run_transaction("persist_events", self._batch_writer(
                        room_id, batch, positions, push_rows, redacted, own_position, joins))
            if redacted:  # recounted in the transaction
                push_store.unread.invalidate_room(room_id)
            push_store.unread.set_counts(room_id, [(u, t, n, h) for _, u, t, n, h in counts])
            for user_id in joins:  # recounted in the transaction
                push_store.unread.invalidate(user_id, room_id)
            for p in batch:
                if p.txn is not None:
                    self.store.txn_ids.add(p.txn[0], p.txn[1], room_id, p.txn[2], p.event.event_id)
            # Still inside `allocate_many`: our positions count as in flight, so no announcement of a
            # position at or above them (by us or a concurrent batch) can precede what follows. Readers
            # therefore learn of these rooms, members and push counts before they may serve the events.
            EVENTS_PERSISTED.inc(len(batch))
            users: list[str] = []
            persisted_at = now_ms()
            for p in batch:
                ev = p.event
                observe_persisted(ev.origin_server_ts, persisted_at, ev.sender.endswith(":" + self.hs.server_name))
                self.store.cache_event(ev)
                if ev.type == "m.room.redaction" and ev.redacts:
                    self.store.invalidate_event(ev.redacts)
                if ev.membership is not None and ev.state_key:
                    users.append(ev.state_key)
            announced = tracker.persisted_upto
            await stream.publish(announced, row_position=positions[-1], first_position=positions[0],
                                 rooms=[room_id], users=users, redacts=redacted,
                                 events=[[pos, p.event.event_id] for p, pos in zip(batch, positions, strict=True)])
        if tracker.persisted_upto > announced:
            await stream.publish(tracker.persisted_upto)
        for p in batch:
            if not p.future.done():
                p.future.set_result(p.event)
        if rest is not None:
            # A task of its own: it goes out after the woken /syncs have run, and the room's next
            # batch need not wait for it (the room's rests run in order, each after the one before).
            previous = self._rests.get(room_id)
            task = asyncio.get_running_loop().create_task(
                self._persist_rest(room_id, rest[0], rest[1], positions, previous))
            self._rests[room_id] = task
            task.add_done_callback(lambda t: self._rests.pop(room_id) if self._rests.get(room_id) is t else None)

    async def _push_rows(self, events: list[Event]) -> list[PushRow]:
        return await self.push_evaluator.compute_push_actions(events) if self.push_evaluator is not None else []

    def _defer_notifications(self) -> bool:
        """The rest of a plain batch may follow its events when every reader is in this process
        (`UnreadCountsCache.add_counts`, the transaction-ID index and the room's head cover the gap;
        other processes would read the database in between)."""
        return self.hs.replication.single_process and len(self.hs.events_stream.writers) == 1

    async def _persist_events_first(self, room_id: str, rows: list[PlainRow], positions: list[int]) -> list[PushRow]:
        """Commit plain events alone, evaluating push rules while PostgreSQL works; the cached unread
        counts take the new notifications at once, the database right after (`_persist_rest`)."""
        push_store = self.hs.push_store
        push_store.pending.start(room_id)
        self._unnotified.add(positions[0])
        # The evaluation is a task that first runs when this one waits for PostgreSQL: the statement
        # goes out first, and its result reaches this task directly, with no task in between.
        evaluation = asyncio.ensure_future(self._evaluate_while_waiting(room_id, [ev for ev, _, _ in rows]))
        try:
            await persist_plain_events(self.hs.db, room_id, self.hs.instance_name, rows, None, None)
        except BaseException:
            evaluation.cancel()
            push_store.pending.done(room_id)
            self._unnotified.discard(positions[0])
            raise
        try:
            push_rows = await evaluation
        except BaseException:
            # Cancelled (shutting down) after the events committed: the batch stays unfinished, holding
            # the mark below it, and the next start-up completes it.
            push_store.pending.done(room_id)
            raise
        deltas: dict[tuple[str, str], tuple[int, int]] = {}
        for user_id, _, _, thread_id, _, highlight in push_rows:
            n, h = deltas.get((user_id, thread_id), (0, 0))
            deltas[(user_id, thread_id)] = (n + 1, h + int(highlight))
        push_store.unread.add_counts(room_id, deltas)
        return push_rows

    async def _evaluate_while_waiting(self, room_id: str, events: list[Event]) -> list[PushRow]:
        if self.push_evaluator is None:
            return []
        try:
            jobs = await self.push_evaluator.prepare_push(events)
            if sum(len(job.members) for job in jobs) > MAX_THREADED_EVALUATIONS:
                # Long enough to hold the interpreter lock against the event loop for a while: inline.
                return evaluate_push(jobs)
            return await asyncio.get_running_loop().run_in_executor(self._push_thread, evaluate_push, jobs)
        except Exception:
            # The events commit regardless; at the next start-up they are evaluated again.
            logger.exception("push rule evaluation failed in %s", room_id)
            return []

    async def _persist_rest(self, room_id: str, rows: list[PlainRow], push_rows: list[PushRow],
                            positions: list[int], previous: asyncio.Task[None] | None) -> None:
        """The second statement of `_persist_events_first` (transaction IDs, forward extremity,
        notifications), with the writer's NOTIFIED_UPTO mark: every batch below it is complete."""
        push_store = self.hs.push_store
        try:
            if previous is not None:
                await asyncio.wait([previous])
            mark = min(p for p in self._unnotified if p != positions[0]) - 1 \
                if len(self._unnotified) > 1 else positions[-1]
            async with push_store.count_locks.lock(room_id):
                await persist_rest(self.hs.db, room_id, self.hs.instance_name, rows, push_rows, mark)
            self._unnotified.discard(positions[0])
        except Exception:
            # The batch stays in `_unnotified`, holding the mark below it: the next start-up completes it.
            logger.exception("storing the rest of %d event(s) in %s failed", len(positions), room_id)
            push_store.unread.invalidate_room(room_id)
        finally:
            push_store.pending.done(room_id)

    async def restore_batches(self) -> None:
        """At start-up: complete the batches this writer persisted whose second statement never ran
        (the process stopped between the two), evaluating their push rules again."""
        push_store = self.hs.push_store
        instance = self.hs.instance_name
        if not (self.hs.db.engine == "postgres" and self._defer_notifications()):
            # Nothing is deferred: forget the mark, which would otherwise be stale should this
            # writer defer again some day.
            await push_store.forget_notified_upto(instance)
            return
        mark = await push_store.get_notified_upto(instance)
        if mark is None:  # nothing ever deferred here: every batch so far was stored whole
            await complete_batches(self.hs.db, instance, [], [], await self.store.get_max_stream_ordering())
            return
        while events := await self.store.get_events_persisted_by(instance, mark, 500):
            rows = await self._push_rows(events)
            after, mark = mark, events[-1].internal.position()
            await complete_batches(self.hs.db, instance, events, rows, mark, after)
            logger.info("completed %d event(s) persisted just before the last stop", len(events))
        push_store.unread.clear()

    def notifications_stored_upto(self, position: int) -> int:
        """The highest position at or below `position` below which every batch this writer
        persisted has its notifications stored too (their second statement may still be running)."""
        return min(position, min(self._unnotified) - 1) if self._unnotified else position

    async def flush_rests(self) -> None:
        """Wait for batches still being completed (at shutdown); a room's latest waits for the others."""
        while self._rests:
            await asyncio.gather(*self._rests.values(), return_exceptions=True)

    def _batch_writer(self, room_id: str, batch: list[_Pending], positions: list[int], push_rows: list[PushRow],
                      redacted: list[str], own_position: int | None, joins: list[str],
                      ) -> Callable[[Any], Awaitable[list[SummaryRow]]]:
        """The general persist transaction: state groups, current state, memberships, redactions."""
        async def write(c: Any) -> list[SummaryRow]:
            if batch[0].new_room is not None:  # a new room's first batch: its rows too
                await self.hs.room_store.insert_new_room(c, room_id, batch[0].event.room_version.identifier,
                                                         batch[0].new_room)
            for i, (p, pos) in enumerate(zip(batch, positions, strict=True)):
                ev = p.event
                before, after = ev.internal.state_group_before, ev.internal.state_group_after
                for group in p.groups:
                    await self.store.store_state_group(c, group.id, room_id, group.base, group.delta, group.full)
                if p.new_group is not None and p.full_after is not None:
                    await self.store.store_state_group(c, p.new_group, room_id, before,
                                                       {ev.state_tuple: ev.event_id}, p.full_after)
                if p.was_outlier:
                    await self.store.remove_outlier(c, ev.event_id)
                await self.store.insert_event(c, ev, pos, self.hs.instance_name, before, after, p.txn,
                                              update_current_state=p.current_delta is None,
                                              apply_redaction=p.redaction_applies)
                if p.current_delta is not None:
                    await self.store.apply_current_state_delta(c, room_id, p.current_delta)
                if p.redacts_later is not None:
                    await self.store.record_pending_redaction(c, p.redacts_later, ev.event_id, room_id)
                if p.redacted_by is not None:
                    await self.store.apply_late_redaction(c, ev.event_id, room_id, p.redacted_by)
                    ev.internal.redacted_by = p.redacted_by
                if p.prev_ids is not None:
                    await self.store.move_extremities(c, room_id, p.prev_ids, ev.event_id, p.becomes_head)
                elif i + 1 == len(batch) or batch[i + 1].prev_ids is not None:
                    # A run of events each built on the one before: the last is the room's one head.
                    await self.store.set_forward_extremity(c, room_id, ev.event_id)
            counts = await self.hs.push_store.write_push_actions(
                c, push_rows, redacted, [(user_id, room_id) for user_id in joins])
            if own_position is not None:
                await StreamPositionStore.record_position_in(c, "events", self.hs.instance_name, own_position)
            return counts

        return write


class _NewGroup:
    """A state group staged with the batch that first refers to it."""

    __slots__ = ("id", "room_id", "base", "delta", "full")

    def __init__(self, group_id: int, room_id: str, base: int | None, delta: dict[StateKey, str],
                 full: dict[StateKey, str]) -> None:
        self.id, self.room_id, self.base, self.delta, self.full = group_id, room_id, base, delta, full


class _Pending:
    __slots__ = ("event", "group_before", "txn", "full_after", "new_group", "future", "new_room", "groups",
                 "prev_ids", "current_delta", "was_outlier", "redaction_applies", "becomes_head", "redacts_later",
                 "redacted_by")

    def __init__(self, event: Event, group_before: int | None, txn: tuple[str, str, str] | None) -> None:
        self.event = event
        self.group_before = group_before
        self.txn = txn
        self.full_after: dict[StateKey, str] | None = None
        self.new_group: int | None = None
        self.new_room: NewRoom | None = None  # a new room's first event: the room's rows go with it
        self.future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self.groups: list[_NewGroup] = []  # state groups to store before the event (resolutions)
        # Not built on the one head: the event's prev events, which stop being forward extremities.
        self.prev_ids: list[str] | None = None
        # From another server: how the room's current state moves (else: the event's own entry).
        self.current_delta: list[tuple[str, str, str | None, str | None]] | None = None
        self.was_outlier = False  # held as an outlier before: that row goes
        self.becomes_head = True  # False: a received event whose child is a head already
        self.redacts_later: str | None = None  # a received redaction of an event not held yet
        self.redacted_by: str | None = None  # a received event redacted by a redaction that came first
        # A redaction from another server whose sender may not redact its target: stored, not applied.
        self.redaction_applies = True

    @property
    def linear(self) -> bool:
        """Built on the room's one head, with nothing else to store: the fast path may take it."""
        return self.prev_ids is None and not self.groups


MAX_BATCH = 100
# The most prev_events a local event names when the room has several forward extremities (Synapse's cap).
MAX_PREV_EVENTS = 10
# Member evaluations (~15 µs each) a batch may have for its push rules to be evaluated in the thread.
MAX_THREADED_EVALUATIONS = 64
