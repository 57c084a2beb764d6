"""Transactions to application services: the `appservice_notifier` duty (`notify_appservices_from_worker`,
main by default), run by exactly one process.

**What a service gets.** Every event it is interested in (Synapse's rules: the sender or, for a member
event, the target is in its user namespace; the room ID is in its room namespace; one of the room's
aliases is in its alias namespace; or a joined member of the room is in its user namespace), in stream
order. With `receive_ephemeral` (MSC2409): typing and public read receipts in such rooms, presence of
its users and of the users sharing a room with them, and to-device messages for its users' devices.
With `org.matrix.msc3202`: the users whose device lists changed that it shares a room with, and the
one-time key counts and unused fallback key types of its users' devices.

**Durable, in order, once.** Each service follows the streams from its own positions
(`appservice_state`), read from the database like a federation catch-up rather than queued in memory:
a service that is down for a day costs nothing but its position. The next transaction (at most
MAX_EVENTS events) is *stored* with the positions it moves to in one database transaction
(`appservice_txns`) before it is sent; only once the service has acknowledged it is it deleted and the
next one made. One transaction in flight per service. A crash or an outage therefore re-sends the
stored transaction with the same ID (the service drops a repeat) and never skips or reorders; a clean
stop first lets the transaction in flight be answered (up to STOP_DRAIN_S), so it repeats nothing.

**Backoff.** A failed transaction is retried after BACKOFF_BASE_S * 2^n seconds (n failures so far,
capped at MAX_BACKOFF_S: Synapse's recoverer, 2 s to 512 s); a successful send, or a successful ping of
the service (POST /_matrix/client/v1/appservice/{id}/ping, from any process), ends the wait.

Typing is the one thing held in memory only (as everywhere in this server): the typing notifications
seen since the last transaction, the latest per room.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hs.appservice.api import AppServiceApi, legacy_authorization
from hs.appservice.registration import ApplicationService
from hs.db.stores.appservice import AppServiceStore, StoredTxn
from hs.db.stores.federation_sending import FederationSendingStore
from hs.db.stores.presence import PresenceState
from hs.events.event import Event
from hs.services.presence import format_presence
from hs.services.serialize import serialize_events
from hs.util import LruCache, json_loads, now_ms

if TYPE_CHECKING:
    from hs.server import HomeServer

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
CHANNEL = "appservice"  # replication channel: {"kind": "wake", "as_id": ...} after a successful ping
MAX_EVENTS = 100  # per transaction (Synapse's limit)
MAX_EPHEMERAL = 100  # receipts and presence per transaction (Synapse's limit)
MAX_TO_DEVICE = 100
SCAN_BATCH = 1000  # events stream rows read at once while looking for a service's events
POLL_S = 5.0  # a service looks for work this often even without being woken
POSITION_WRITE_S = 1.0  # positions moved without a transaction are written at most this often
ALIAS_CACHE_S = 30.0  # a room's aliases are read again after this long (they change without events)
STOP_DRAIN_S = 5.0  # at stop, how long a transaction in flight may take to be answered (see stop())


class _Service:
    """One service's sending state in the notifier."""

    def __init__(self, service: ApplicationService) -> None:
        self.service = service
        self.positions: dict[str, int] = {}
        self.stored_positions: dict[str, int] = {}
        self.positions_written_at = 0.0
        self.pending: StoredTxn | None = None
        self.pending_loaded = False
        self.failures = 0
        self.retry_at = 0.0
        self.typing: dict[str, list[str]] = {}  # room -> users typing (latest seen)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class AppServiceSender:
    # Attributes, so that tests can shorten the backoff (not a config key: Synapse has none).
    BACKOFF_BASE_S = 1.0
    MAX_BACKOFF_S = 512.0

    def __init__(self, hs: HomeServer, api: AppServiceApi | None = None) -> None:
        self.hs = hs
        self.store = AppServiceStore(hs.db)
        self.events_store = FederationSendingStore(hs.db)  # its events_between: the rows to route
        self.api = api or AppServiceApi(legacy_auth=legacy_authorization(hs))
        self._services = {s.id: _Service(s) for s in hs.config.app_services if s.url is not None}
        # room -> IDs of the services with a joined member there (dropped when the room's members change).
        self._member_interest: LruCache[str, frozenset[str]] = LruCache(50_000, name="appservice.sender.self._member_interest")
        self._aliases: LruCache[str, tuple[float, tuple[str, ...]]] = LruCache(50_000, name="appservice.sender.self._aliases")
        self._subscribed = False
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    def subscribe(self) -> None:
        """Before the replication transport starts: the channels that wake the services."""
        if self._subscribed or not self._services:
            return
        self._subscribed = True
        replication = self.hs.replication
        replication.subscribe("events", self._on_events)
        replication.subscribe(CHANNEL, self._on_channel)
        if any(s.service.receive_ephemeral for s in self._services.values()):
            replication.subscribe("typing", self._on_typing)
            for stream in ("receipts", "presence", "to_device"):
                replication.subscribe(stream, lambda _msg: self._wake(lambda s: s.receive_ephemeral))
        if any(s.service.msc3202 for s in self._services.values()):
            replication.subscribe("device_lists", lambda _msg: self._wake(lambda s: s.msc3202))

    async def start(self) -> None:
        if self._started:
            return
        self.subscribe()
        self._started = True
        loop = asyncio.get_running_loop()
        for svc in self._services.values():
            state = await self.store.get_state(svc.service.id)
            if state is None:
                # A new service is owed what happens from now on.
                await self.store.create_state(svc.service.id, self._current_positions())
                state = await self.store.get_state(svc.service.id)
                assert state is not None
            svc.positions = dict(state.positions)
            svc.stored_positions = dict(state.positions)
            svc.failures = state.failures
            if state.failures:
                # Respect a backoff recorded before the restart.
                wait_s = self._backoff_s(state.failures) - (now_ms() - state.failed_ts) / 1000
                svc.retry_at = loop.time() + max(0.0, wait_s)
            svc.task = loop.create_task(self._run(svc))

    async def stop(self) -> None:
        """A transaction in flight is given STOP_DRAIN_S to be answered before its task is cancelled: cut
        off, the service may well have taken it while its acknowledgement went unrecorded, and it would
        be sent again after the restart (a repeat the service has to drop) although nothing crashed."""
        self._closed = True
        tasks = [s.task for s in self._services.values() if s.task is not None]
        for svc in self._services.values():
            svc.wake.set()  # out of a backoff or poll wait: the loop sees _closed and ends
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STOP_DRAIN_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for svc in self._services.values():
            try:
                await self._write_positions(svc, force=True)
            except Exception as e:  # the database may be going away too: the positions are re-read
                logger.warning("appservice %s: writing positions at shutdown failed: %s", svc.service.id, e)
        await self.api.close()

    def _current_positions(self) -> dict[str, int]:
        hs = self.hs
        return {"events": hs.events_stream.current_position(),
                "receipts": hs.receipts_stream.current_position(),
                "presence": hs.presence_stream.current_position(),
                "to_device": hs.to_device_stream.current_position(),
                "device_lists": hs.device_lists_stream.current_position()}

    # -- input -------------------------------------------------------------------------------------------
    def _wake(self, which: Any = None) -> None:
        for svc in self._services.values():
            if which is None or which(svc.service):
                svc.wake.set()

    def _on_events(self, msg: JsonDict) -> None:
        if msg.get("users") or msg.get("gap"):
            for room_id in msg.get("rooms") or ():
                self._member_interest.pop(room_id)
            if msg.get("gap"):
                self._member_interest.clear()
        self._wake()

    def _on_typing(self, msg: JsonDict) -> None:
        data = msg.get("typing")
        if not isinstance(data, dict) or not isinstance(data.get("room_id"), str):
            return
        for svc in self._services.values():
            if svc.service.receive_ephemeral:
                svc.typing[data["room_id"]] = list(data.get("user_ids") or ())
                svc.wake.set()

    def _on_channel(self, msg: JsonDict) -> None:
        if msg.get("kind") == "wake":
            svc = self._services.get(str(msg.get("as_id")))
            if svc is not None:
                self.reset_backoff(svc.service.id)

    def reset_backoff(self, as_id: str) -> None:
        """The service answered (a ping): retry at once."""
        svc = self._services.get(as_id)
        if svc is not None and svc.retry_at:
            svc.retry_at = 0.0
            svc.wake.set()

    # -- interest ------------------------------------------------------------------------------------------
    async def _members_interested(self, room_id: str) -> frozenset[str]:
        """IDs of the services with a joined local member of the room in their user namespace (local:
        a service's users are this server's, whatever its regex also matches elsewhere; as Synapse)."""
        known = self._member_interest.get(room_id)
        if known is None:
            suffix = ":" + self.hs.server_name
            members = [m for m in await self.hs.event_store.get_joined_members(room_id) if m.endswith(suffix)]
            known = frozenset(svc.service.id for svc in self._services.values()
                              if any(svc.service.is_interested_in_user(m) for m in members))
            self._member_interest.set(room_id, known)
        return known

    async def _room_aliases(self, room_id: str) -> tuple[str, ...]:
        cached = self._aliases.get(room_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < ALIAS_CACHE_S:
            return cached[1]
        aliases = tuple(await self.store.room_aliases(room_id))
        self._aliases.set(room_id, (now, aliases))
        return aliases

    async def interested_in_room(self, service: ApplicationService, room_id: str) -> bool:
        if service.is_interested_in_room_id(room_id):
            return True
        if service.namespaces.get("aliases") and any(
                service.is_interested_in_alias(a) for a in await self._room_aliases(room_id)):
            return True
        return service.id in await self._members_interested(room_id)

    async def _interested_in_row(self, service: ApplicationService, row: Any) -> bool:
        if service.is_interested_in_user(row["sender"]):
            return True
        if row["type"] == "m.room.member" and row["state_key"] is not None:
            self._member_interest.pop(row["room_id"])  # its members change at this event
            if service.is_interested_in_user(row["state_key"]):
                return True
        return await self.interested_in_room(service, row["room_id"])

    # -- the loop --------------------------------------------------------------------------------------------
    def _backoff_s(self, failures: int) -> float:
        return float(min(self.MAX_BACKOFF_S, self.BACKOFF_BASE_S * 2.0 ** min(failures, 30)))

    async def _run(self, svc: _Service) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            svc.wake.clear()
            wait = svc.retry_at - loop.time()
            if svc.retry_at and wait > 0:
                await self._sleep(svc, wait)
                continue
            try:
                if not svc.pending_loaded:
                    svc.pending = await self.store.oldest_unacked_txn(svc.service.id)
                    svc.pending_loaded = True
                if svc.pending is None:
                    svc.pending = await self._make_txn(svc)
                if svc.pending is None:
                    await self._write_positions(svc)
                    if not svc.wake.is_set():
                        await self._sleep(svc, POLL_S)
                    continue
                if self._closed:
                    break  # stopping: a transaction stored and not yet sent goes out after the restart
                await self._send(svc, svc.pending)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("appservice %s: sending failed unexpectedly", svc.service.id)
                svc.pending_loaded = False
                await asyncio.sleep(1.0)

    async def _sleep(self, svc: _Service, seconds: float) -> None:
        waiter = asyncio.ensure_future(svc.wake.wait())
        try:
            await asyncio.wait((waiter,), timeout=seconds)
        finally:
            waiter.cancel()

    async def _send(self, svc: _Service, txn: StoredTxn) -> None:
        body = await self._body(svc.service, txn)
        if await self.api.push(svc.service, txn.txn_id, body):
            await self.store.complete_txn(svc.service.id, txn.txn_id)
            svc.pending = None
            svc.failures = 0
            svc.retry_at = 0.0
            return
        svc.failures += 1
        delay = self._backoff_s(svc.failures)
        svc.retry_at = asyncio.get_running_loop().time() + delay
        logger.info("appservice %s: transaction %d failed (%d in a row); retrying in %.1fs", svc.service.id,
                    txn.txn_id, svc.failures, delay)
        await self.store.set_failures(svc.service.id, svc.failures)

    async def _body(self, service: ApplicationService, txn: StoredTxn) -> JsonDict:
        found = await self.hs.event_store.get_events(txn.event_ids)
        events: list[Event] = [found[e] for e in txn.event_ids if e in found]
        serialized = await serialize_events(self.hs, events)
        for event, out in zip(events, serialized, strict=True):
            # An invite or knock carries its stripped room state, as Synapse sends it to services.
            unsigned = event.pdu.get("unsigned") or {}
            for key in ("invite_room_state", "knock_room_state"):
                if key in unsigned:
                    out["unsigned"][key] = unsigned[key]
        return self.api.transaction_body(service, serialized, txn.extra)

    async def _write_positions(self, svc: _Service, force: bool = False) -> None:
        """Positions moved past rows of no interest to the service are written at most every
        POSITION_WRITE_S: a restart re-reads at most that much, and finds nothing there again."""
        now = time.monotonic()
        if svc.positions == svc.stored_positions or not svc.positions:
            return
        if not force and now - svc.positions_written_at < POSITION_WRITE_S:
            return
        svc.positions_written_at = now
        await self.store.advance_positions(svc.service.id, svc.positions)
        svc.stored_positions = dict(svc.positions)

    # -- making a transaction ----------------------------------------------------------------------------
    async def _make_txn(self, svc: _Service) -> StoredTxn | None:
        """The next transaction, stored with the positions it moves to; None when nothing is owed."""
        service = svc.service
        positions = dict(svc.positions)
        event_ids = await self._next_events(service, positions)
        extra: JsonDict = {}
        if service.receive_ephemeral:
            ephemeral = await self._typing(svc)
            ephemeral += await self._receipts(service, positions)
            ephemeral += await self._presence(service, positions)
            to_device = await self._to_device(service, positions)
            if ephemeral:
                extra["ephemeral"] = ephemeral
            if to_device:
                extra["to_device"] = to_device
        if service.msc3202:
            changed = await self._device_list_changes(service, positions)
            if changed:
                extra["device_lists"] = {"changed": changed, "left": []}
        if not event_ids and not extra:
            svc.positions = positions
            return None
        if service.msc3202:
            users = await self._key_count_users(service, event_ids, extra)
            otks = await self.store.one_time_key_counts(users)
            fallbacks = await self.store.unused_fallback_key_types(users)
            if otks:
                extra["otk_counts"] = otks
            if fallbacks:
                extra["fallback_keys"] = fallbacks
        txn_id = await self.store.store_txn(service.id, event_ids, extra, positions)
        svc.positions = positions
        svc.stored_positions = dict(positions)
        return StoredTxn(txn_id, event_ids, extra)

    async def _next_events(self, service: ApplicationService, positions: dict[str, int]) -> list[str]:
        """Up to MAX_EVENTS events of interest after the service's events position; the position moves to
        the last one taken, or to where the reading stopped."""
        chosen: list[str] = []
        upto = self.hs.events_stream.current_position()
        while positions["events"] < upto and len(chosen) < MAX_EVENTS:
            rows = await self.events_store.events_between(positions["events"], upto, SCAN_BATCH)
            if not rows:
                positions["events"] = upto
                break
            for row in rows:
                if await self._interested_in_row(service, row):
                    chosen.append(row["event_id"])
                positions["events"] = int(row["stream_ordering"])
                if len(chosen) >= MAX_EVENTS:
                    break
            else:
                if len(rows) < SCAN_BATCH:
                    positions["events"] = upto
        return chosen

    async def _typing(self, svc: _Service) -> list[JsonDict]:
        out: list[JsonDict] = []
        rooms, svc.typing = svc.typing, {}
        for room_id, users in rooms.items():
            if await self.interested_in_room(svc.service, room_id):
                out.append({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}})
        return out

    async def _receipts(self, service: ApplicationService, positions: dict[str, int]) -> list[JsonDict]:
        upto = self.hs.receipts_stream.current_position()
        if upto <= positions["receipts"]:
            return []
        rows = await self.store.receipts_between(positions["receipts"], upto, MAX_EPHEMERAL)
        positions["receipts"] = int(rows[-1]["stream_id"]) if len(rows) == MAX_EPHEMERAL else upto
        by_room: dict[str, JsonDict] = {}
        for r in rows:
            if not await self.interested_in_room(service, r["room_id"]):
                continue
            receipt: JsonDict = {"ts": int(r["ts"])}
            if r["thread_id"]:
                receipt["thread_id"] = r["thread_id"]
            content = by_room.setdefault(r["room_id"], {})
            content.setdefault(r["event_id"], {}).setdefault(r["receipt_type"], {})[r["user_id"]] = receipt
        return [{"type": "m.receipt", "room_id": room_id, "content": content} for room_id, content in by_room.items()]

    async def _presence(self, service: ApplicationService, positions: dict[str, int]) -> list[JsonDict]:
        upto = self.hs.presence_stream.current_position()
        if upto <= positions["presence"]:
            return []
        rows = await self.store.presence_between(positions["presence"], upto, MAX_EPHEMERAL)
        positions["presence"] = int(rows[-1]["stream_id"]) if len(rows) == MAX_EPHEMERAL else upto
        if not rows:
            return []
        others = [r["user_id"] for r in rows if not service.is_interested_in_user(r["user_id"])]
        rooms_of = await self.store.rooms_of_users(others)
        now = now_ms()
        out: list[JsonDict] = []
        for r in rows:
            user_id = r["user_id"]
            if not service.is_interested_in_user(user_id):
                # Someone sharing a room with one of the service's users (Synapse's rule).
                shared = False
                for room_id in rooms_of.get(user_id, ()):
                    if service.id in await self._members_interested(room_id):
                        shared = True
                        break
                if not shared:
                    continue
            state = PresenceState(user_id=user_id, state=r["state"], status_msg=r["status_msg"],
                                  last_active_ts=int(r["last_active_ts"]),
                                  currently_active=bool(r["currently_active"]))
            out.append({"type": "m.presence", "sender": user_id, "content": format_presence(state, now)})
        return out

    async def _to_device(self, service: ApplicationService, positions: dict[str, int]) -> list[JsonDict]:
        upto = self.hs.to_device_stream.current_position()
        if upto <= positions["to_device"]:
            return []
        rows = await self.store.to_device_between(positions["to_device"], upto, MAX_TO_DEVICE)
        positions["to_device"] = int(rows[-1]["stream_id"]) if len(rows) == MAX_TO_DEVICE else upto
        return [{"type": r["type"], "sender": r["sender"], "to_user_id": r["user_id"], "to_device_id": r["device_id"],
                 "content": json_loads(r["content"])}
                for r in rows if service.is_interested_in_user(r["user_id"])]

    async def _device_list_changes(self, service: ApplicationService, positions: dict[str, int]) -> list[str]:
        """Users whose device lists changed that are the service's or share a room with its users (the
        `left` half is not computed, as in Synapse)."""
        upto = self.hs.device_lists_stream.current_position()
        if upto <= positions["device_lists"]:
            return []
        users = await self.store.device_list_changes_between(positions["device_lists"], upto)
        positions["device_lists"] = upto
        others = [u for u in users if not service.is_interested_in_user(u)]
        rooms_of = await self.store.rooms_of_users(sorted(others))
        changed = []
        for user_id in sorted(users):
            if service.is_interested_in_user(user_id):
                changed.append(user_id)
                continue
            for room_id in rooms_of.get(user_id, ()):
                if await self.interested_in_room(service, room_id):
                    changed.append(user_id)
                    break
        return changed

    async def _key_count_users(self, service: ApplicationService, event_ids: list[str], extra: JsonDict) -> list[str]:
        """The service's users whose key counts a transaction reports (Synapse's choice): its sender, its
        users in the rooms of the transaction's events and ephemeral events, and to-device recipients."""
        users = {service.sender}
        rooms = {e.room_id for e in (await self.hs.event_store.get_events(event_ids)).values()}
        rooms.update(e["room_id"] for e in extra.get("ephemeral") or () if isinstance(e.get("room_id"), str))
        for room_id in rooms:
            users.update(m for m in await self.hs.event_store.get_joined_members(room_id)
                         if service.is_interested_in_user(m))
        users.update(m["to_user_id"] for m in extra.get("to_device") or ())
        return sorted(users)

    def status(self) -> dict[str, JsonDict]:
        """Each service's state (tests and debugging)."""
        loop = asyncio.get_event_loop()
        return {as_id: {"positions": dict(s.positions), "failures": s.failures,
                        "pending_txn": s.pending.txn_id if s.pending else None,
                        "retry_in_s": max(0.0, s.retry_at - loop.time()) if s.retry_at else 0.0}
                for as_id, s in self._services.items()}


def appservice_sender(hs: HomeServer) -> AppServiceSender:
    """The process's AppServiceSender, made on first use and kept on the HomeServer (under the name a
    `cached_property` of HomeServer would use, so adding one there changes nothing here)."""
    sender = hs.__dict__.get("appservice_sender")
    if sender is None:
        sender = hs.__dict__["appservice_sender"] = AppServiceSender(hs)
    assert isinstance(sender, AppServiceSender)
    return sender
