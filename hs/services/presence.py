"""Presence: online / unavailable / offline, a status message, and how long ago the user was active.

The presence writer (`stream_writers.presence`) owns every local user's live state, in memory for
users who are not offline and in the `presence` table for everybody. Other processes forward what
they see (a /sync, a PUT of the status) to the writer and read the table.

Rules, as Synapse applies them:

* A /sync with `set_presence=online` (the default) marks the user online and active now;
  `unavailable` marks them unavailable; `offline` leaves their presence alone.
* `currently_active` is true while the user was active within `active_granularity_ms`.
* Online with no activity for `idle_timeout_ms` becomes unavailable; no /sync for `sync_timeout_ms`
  (counted from the end of the sync's long-poll) becomes offline. A periodic task on the writer
  applies both.
* Only a change clients should see (state, status message, `currently_active`, or a jump in the last
  active time of someone not currently active) gets a stream position and wakes anybody; a sync that
  merely refreshes the timestamps is kept in memory and written back in batches.

With `use_presence: false` everything here is a no-op: GET says offline, /sync carries no presence.

Federation (Synapse's rules too): a local user's visible change goes as an `m.presence` EDU to every
server sharing a room with them, and is re-sent every `FEDERATION_PING_INTERVAL_MS` while they are
not offline; a remote user's state (`receive_remote`, checked by hs/federation/edus.py) is stored at
a stream position like a local one, and becomes offline when their server has said nothing for
`FEDERATION_TIMEOUT_MS`. Remote users never enter the local timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hs.db.stores.presence import OFFLINE, ONLINE, UNAVAILABLE, PresenceState
from hs.errors import forbidden, not_found
from hs.events.auth import get_domain
from hs.util import KeyedLocks, cancel_and_wait, now_ms, wait_set_or_timeout

if TYPE_CHECKING:
    from hs.server import HomeServer
    from hs.services.sync import SyncConfig
    from hs.streams.tokens import StreamToken

logger = logging.getLogger(__name__)

PRESENCE_EVENT = "m.presence"
PRESENCE_EDU = "m.presence"
# A remote user not heard of for this long is offline; a local one is re-sent before that.
FEDERATION_TIMEOUT_MS = 30 * 60 * 1000
FEDERATION_PING_INTERVAL_MS = 25 * 60 * 1000
Change = Callable[[PresenceState, int], PresenceState]


def format_presence(state: PresenceState, now: int) -> dict[str, Any]:
    """The `m.presence` content / GET body: last_active_ago only if ever active, currently_active only
    when online, status_msg only if set (as Synapse)."""
    content: dict[str, Any] = {"presence": state.state}
    if state.last_active_ts:
        content["last_active_ago"] = max(0, now - state.last_active_ts)
    if state.status_msg:
        content["status_msg"] = state.status_msg
    if state.state == ONLINE:
        content["currently_active"] = state.currently_active
    return content


class PresenceService:
    # Timeouts; attributes so tests (and operators) can shorten them. See `set_timeouts`.
    idle_timeout_ms = 5 * 60 * 1000
    sync_timeout_ms = 30 * 1000
    active_granularity_ms = 60 * 1000
    check_interval_s = 5.0
    # How often quiet timestamp refreshes are written back, at most.
    flush_interval_s = 60.0

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.enabled = hs.config.use_presence
        self.stream = hs.presence_stream
        self.stream.on_command = self.handle_command
        self.store = self.stream.store
        # Writer only: users who are not offline (and those touched since they went offline).
        self._states: dict[str, PresenceState] = {}
        # Writer only: when each user's current /sync long-poll ends (ms); they count as syncing until then.
        self._sync_until: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._locks = KeyedLocks()
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._last_flush = 0.0
        # Writer only: remote users not offline -> when their server last told us about them (ms).
        self._remote_seen: dict[str, int] = {}
        # Writer only: local users -> when their presence last went to other servers (ms).
        self._federated_at: dict[str, int] = {}

    @property
    def _is_writer(self) -> bool:
        return self.stream.is_writer

    # -- lifecycle (writer) ---------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled or not self._is_writer:
            return
        now = now_ms()
        for state in await self.store.get_not_offline():
            if self._is_mine(state.user_id):
                self._states[state.user_id] = state
            else:  # their server's next update (or the federation timeout) follows
                self._remote_seen[state.user_id] = now
        self._task = asyncio.create_task(self._timeout_loop())
        if self.hs.sends_federation:
            self.hs.replication.subscribe("events", self._on_events_message)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for task in list(self._background):
            task.cancel()
        try:
            await self.flush()
        except Exception:
            logger.exception("could not write back presence timestamps")

    def set_timeouts(self, *, idle_ms: int | None = None, sync_ms: int | None = None,
                     active_granularity_ms: int | None = None, check_interval_s: float | None = None) -> None:
        if idle_ms is not None:
            self.idle_timeout_ms = idle_ms
        if sync_ms is not None:
            self.sync_timeout_ms = sync_ms
        if active_granularity_ms is not None:
            self.active_granularity_ms = active_granularity_ms
        if check_interval_s is not None:
            self.check_interval_s = check_interval_s
        self._kick.set()

    # -- entry points ---------------------------------------------------------------------------------
    async def user_syncing(self, user_id: str, set_presence: str, timeout_ms: int = 0) -> None:
        """Called once at the start of every /sync."""
        if not self.enabled or set_presence == OFFLINE:
            return
        if not self._is_writer:
            await self.stream.send_command({"kind": "sync", "user_id": user_id, "presence": set_presence,
                                            "timeout_ms": timeout_ms})
            return
        await self._syncing(user_id, set_presence, timeout_ms)

    async def set_status(self, user_id: str, presence: str, status_msg: str | None) -> None:
        """PUT /presence/{userId}/status (validated by the caller)."""
        if not self.enabled:
            return
        if not self._is_writer:
            await self.stream.send_command({"kind": "set", "user_id": user_id, "presence": presence,
                                            "status_msg": status_msg})
            return
        await self._set(user_id, presence, status_msg)

    def user_active(self, user_id: str) -> None:
        """The user did something (sent an event, a receipt): their last active time is now, and
        `unavailable` becomes `online`, as Synapse's presence bump does; `offline` stays offline
        (a client that wants to appear online syncs). Runs in the background, off the request path."""
        if not self.enabled:
            return
        task = asyncio.get_running_loop().create_task(self._active(user_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def get_status(self, observer: str, user_id: str) -> dict[str, Any]:
        """GET /presence/{userId}/status: 404 for unknown users, 403 if no room is shared (as Synapse)."""
        if not self.enabled:
            return {"presence": OFFLINE}
        if user_id != observer:
            is_local = user_id.startswith("@") and user_id.endswith(":" + self.hs.server_name)
            if not is_local:
                # A remote user is known only as a room-mate (their presence came over federation).
                if not user_id.startswith("@") or not await self.store.shares_room(observer, user_id):
                    raise not_found("Unknown user")
            elif await self.hs.user_store.get_user(user_id) is None:
                raise not_found("Unknown user")
            elif not await self.store.shares_room(observer, user_id):
                raise forbidden("You are not allowed to see their presence.")
        state = await self._current(user_id)
        return format_presence(state, now_ms())

    async def add_to_sync(self, config: SyncConfig, now: StreamToken, body: dict[str, Any]) -> bool:
        """Fill the response's `presence.events` for the range (since, now]; True if there are any."""
        if not self.enabled:
            return False
        upto = now.get("presence")
        since = config.since
        if since is not None and not config.full_state:
            after = min(since.get("presence"), upto)
            # Every room's events range lies within these (per-writer positions: the union of the
            # rooms' ranges); a room-mate seen twice just gets their current presence again.
            events_after, events_upto = self.hs.events_stream.bounds(since.min(now), now)
            if after >= upto and not now.stream_is_after(since, "events"):
                return False
            states = []
            if after < upto:
                states = await self.store.get_changed_for_observer(config.user_id, after, upto)
            if events_after < events_upto and self.hs.event_store.any_membership_changed_after(events_after):
                # As Synapse: the current presence of users who just became room-mates.
                seen = {s.user_id for s in states}
                states += [s for s in await self.store.get_for_new_room_mates(
                    config.user_id, events_after, events_upto, upto) if s.user_id not in seen]
        else:
            states = await self.store.get_current_for_observer(config.user_id, upto)
        presence_filter = config.filter.presence
        states = [s for s in states if presence_filter.check(PRESENCE_EVENT, s.user_id)]
        if presence_filter.limit is not None:
            states = states[-presence_filter.limit:]
        if not states:
            return False
        t = now_ms()
        events = []
        for state in states:
            live = self._states.get(state.user_id)
            if live is not None and live.stream_id == state.stream_id:
                state = live  # same visible state, fresher timestamps
            events.append({"type": PRESENCE_EVENT, "sender": state.user_id, "content": format_presence(state, t)})
        body["presence"] = {"events": events}
        return True

    def handle_command(self, msg: dict[str, Any]) -> None:
        """A command from another process (writer only)."""
        if not self.enabled or not self._is_writer:
            return
        user_id = msg.get("user_id")
        presence = msg.get("presence")
        if not isinstance(user_id, str) or presence not in (ONLINE, UNAVAILABLE, OFFLINE):
            return
        kind = msg.get("kind")
        if kind == "sync":
            coro = self._syncing(user_id, presence, int(msg.get("timeout_ms") or 0))
        elif kind == "set":
            status = msg.get("status_msg")
            coro = self._set(user_id, presence, status if isinstance(status, str) else None)
        elif kind == "active":
            coro = self._active(user_id)
        elif kind == "remote":
            status = msg.get("status_msg")
            coro = self.receive_remote(user_id, presence, status if isinstance(status, str) else None,
                                       int(msg.get("last_active_ago") or 0), bool(msg.get("currently_active")))
        else:
            return
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the writer's state machine -------------------------------------------------------------------
    async def _syncing(self, user_id: str, presence: str, timeout_ms: int) -> None:
        now = now_ms()
        self._sync_until[user_id] = max(self._sync_until.get(user_id, 0), now + max(0, timeout_ms))

        def change(prev: PresenceState, t: int) -> PresenceState:
            new = replace(prev, state=presence, last_user_sync_ts=t)
            return replace(new, last_active_ts=t) if presence == ONLINE else new

        await self._update(user_id, change)

    async def _active(self, user_id: str) -> None:
        def change(prev: PresenceState, t: int) -> PresenceState:
            new = replace(prev, last_active_ts=t)
            return replace(new, state=ONLINE) if prev.state == UNAVAILABLE else new

        try:
            if self._is_writer:
                await self._update(user_id, change)
            else:
                await self.stream.send_command({"kind": "active", "user_id": user_id, "presence": ONLINE})
        except Exception:
            logger.exception("could not record activity of %s", user_id)

    async def _set(self, user_id: str, presence: str, status_msg: str | None) -> None:
        # Setting one's status is client activity too: it counts as a sync (unlike Synapse, so that a
        # client that sets its presence before its first /sync is not timed out at once).
        def change(prev: PresenceState, t: int) -> PresenceState:
            new = replace(prev, state=presence, status_msg=status_msg, last_user_sync_ts=t)
            return replace(new, last_active_ts=t) if presence == ONLINE else new

        await self._update(user_id, change)

    async def _current(self, user_id: str) -> PresenceState:
        state = self._states.get(user_id)
        if state is None:
            state = await self.store.get(user_id)
        return state if state is not None else PresenceState(user_id)

    async def _update(self, user_id: str, change: Change) -> None:
        async with self._locks.lock(user_id):
            prev = await self._current(user_id)
            now = now_ms()
            new = change(prev, now)
            active = new.state == ONLINE and now - new.last_active_ts < self.active_granularity_ms
            new = replace(new, currently_active=active)
            if self._should_notify(prev, new):
                rooms = list(await self.hs.event_store.get_rooms_for_user(user_id, ("join",)))
                new = await self.stream.persist(new, rooms)
                self._dirty.discard(user_id)
                await self._federate(new, rooms)
            elif new != prev:
                if new.stream_id:
                    self._dirty.add(user_id)
            else:
                return
            if new.state == OFFLINE and user_id not in self._dirty:
                self._states.pop(user_id, None)
                self._sync_until.pop(user_id, None)
            else:
                self._states[user_id] = new

    # -- federation ----------------------------------------------------------------------------------
    def _is_mine(self, user_id: str) -> bool:
        return get_domain(user_id) == self.hs.server_name

    async def _federate(self, state: PresenceState, rooms: list[str]) -> None:
        """Send a local user's presence to every other server sharing one of `rooms` with them."""
        if not self._is_mine(state.user_id) or not self.hs.sends_federation:
            return
        now = now_ms()
        if state.state == OFFLINE:
            self._federated_at.pop(state.user_id, None)
        else:
            self._federated_at[state.user_id] = now
        outbox = self.hs.federation_outbox
        destinations: set[str] = set()
        for room_id in rooms:
            destinations |= await outbox.servers_in_room(room_id)
        if not destinations:
            return
        await outbox.send_edus(destinations, PRESENCE_EDU, {"push": [self._edu_update(state, now)]})

    @staticmethod
    def _edu_update(state: PresenceState, now: int) -> dict[str, Any]:
        update = {"user_id": state.user_id, **format_presence(state, now)}
        update.setdefault("last_active_ago", max(0, now - state.last_active_ts))
        update.setdefault("currently_active", False)
        return update

    def _on_events_message(self, msg: dict[str, Any]) -> None:
        users = [u for u in msg.get("users") or () if isinstance(u, str)]
        rooms = [r for r in msg.get("rooms") or () if isinstance(r, str)]
        if users and rooms:
            task = asyncio.get_running_loop().create_task(self._on_memberships(rooms, users))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _on_memberships(self, rooms: list[str], users: list[str]) -> None:
        """Joins, as Synapse handles them: a server whose first member joined a room gets the presence
        of our users there (else it would see none until each changes); our user who joined a room is
        sent to its other servers."""
        store = self.hs.event_store
        try:
            for room_id in rooms:
                members: list[str] | None = None
                for user_id in users:
                    membership = await store.get_membership(room_id, user_id)
                    if membership is None or membership[0] != "join":
                        continue
                    if self._is_mine(user_id):
                        state = self._states.get(user_id)
                        if state is not None and state.state != OFFLINE:
                            await self._federate(state, [room_id])
                        continue
                    if members is None:
                        members = await store.get_joined_members(room_id)
                    server = get_domain(user_id)
                    if sum(1 for m in members if get_domain(m) == server) != 1:
                        continue  # that server was in the room already
                    now = now_ms()
                    push = [self._edu_update(st, now) for st in (self._states.get(m) for m in members)
                            if st is not None and st.state != OFFLINE and self._is_mine(st.user_id)]
                    if push:
                        await self.hs.federation_outbox.send_edu(server, PRESENCE_EDU, {"push": push})
        except Exception:
            logger.exception("could not send presence for new members of %s", rooms)

    async def receive_remote(self, user_id: str, presence: str, status_msg: str | None, last_active_ago: int,
                             currently_active: bool) -> None:
        """A remote user's presence from an `m.presence` EDU (its origin checked by the caller)."""
        if not self.enabled:
            return
        if not self._is_writer:
            await self.stream.send_command({"kind": "remote", "user_id": user_id, "presence": presence,
                                            "status_msg": status_msg, "last_active_ago": last_active_ago,
                                            "currently_active": currently_active})
            return
        async with self._locks.lock(user_id):
            now = now_ms()
            if presence == OFFLINE:
                self._remote_seen.pop(user_id, None)
            else:
                self._remote_seen[user_id] = now
            prev = await self.store.get(user_id) or PresenceState(user_id)
            new = replace(prev, state=presence, status_msg=status_msg,
                          last_active_ts=max(0, now - max(0, last_active_ago)),
                          currently_active=currently_active and presence == ONLINE)
            if self._should_notify(prev, new):
                rooms = list(await self.hs.event_store.get_rooms_for_user(user_id, ("join",)))
                await self.stream.persist(new, rooms)

    async def _federation_timeouts(self, now: int) -> None:
        """Remote users not heard of for FEDERATION_TIMEOUT_MS become offline; local users who are
        not offline are re-sent after FEDERATION_PING_INTERVAL_MS."""
        for user_id, seen in list(self._remote_seen.items()):
            if now - seen <= FEDERATION_TIMEOUT_MS:
                continue
            self._remote_seen.pop(user_id, None)
            async with self._locks.lock(user_id):
                prev = await self.store.get(user_id)
                if prev is not None and prev.state != OFFLINE:
                    new = replace(prev, state=OFFLINE, currently_active=False)
                    rooms = list(await self.hs.event_store.get_rooms_for_user(user_id, ("join",)))
                    await self.stream.persist(new, rooms)
        if not self.hs.sends_federation:
            return
        for user_id, sent in list(self._federated_at.items()):
            state = self._states.get(user_id)
            if state is None or state.state == OFFLINE:
                self._federated_at.pop(user_id, None)
            elif now - sent > FEDERATION_PING_INTERVAL_MS:
                rooms = list(await self.hs.event_store.get_rooms_for_user(user_id, ("join",)))
                await self._federate(state, rooms)

    def _should_notify(self, old: PresenceState, new: PresenceState) -> bool:
        if old.status_msg != new.status_msg or old.state != new.state:
            return True
        jumped = new.last_active_ts - old.last_active_ts > self.active_granularity_ms
        if old.state == ONLINE:
            if old.currently_active != new.currently_active:
                return True
            return jumped and not new.currently_active
        return jumped

    def _timed_out(self, state: PresenceState, now: int) -> bool:
        """Whether the periodic check has something to change for this user."""
        if state.state == OFFLINE:
            return False
        if state.state == ONLINE:
            idle = now - state.last_active_ts
            if idle > self.idle_timeout_ms or (state.currently_active and idle >= self.active_granularity_ms):
                return True
        last_seen = max(state.last_user_sync_ts, self._sync_until.get(state.user_id, 0))
        return now - last_seen > self.sync_timeout_ms

    async def check_timeouts(self) -> None:
        """One pass of the periodic task: idle -> unavailable, not syncing -> offline, not active."""
        now = now_ms()
        for user_id, state in list(self._states.items()):
            if not self._timed_out(state, now):
                continue

            def change(prev: PresenceState, t: int) -> PresenceState:
                new = prev
                if prev.state == ONLINE and t - prev.last_active_ts > self.idle_timeout_ms:
                    new = replace(new, state=UNAVAILABLE)
                last_seen = max(prev.last_user_sync_ts, self._sync_until.get(prev.user_id, 0))
                if prev.state != OFFLINE and t - last_seen > self.sync_timeout_ms:
                    new = replace(new, state=OFFLINE)
                return new

            try:
                await self._update(user_id, change)
            except Exception:
                logger.exception("presence timeout of %s failed", user_id)
        try:
            await self._federation_timeouts(now)
        except Exception:
            logger.exception("presence federation timeouts failed")

    async def flush(self) -> None:
        """Write back quiet timestamp refreshes."""
        if not self._dirty:
            return
        users, self._dirty = self._dirty, set()
        states = [s for s in (self._states.get(u) for u in users) if s is not None]
        try:
            await self.store.update_timestamps(states)
        except Exception:
            self._dirty |= users
            raise
        for s in states:
            if s.state == OFFLINE and s.user_id not in self._dirty:
                self._states.pop(s.user_id, None)

    async def _timeout_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wait_set_or_timeout(self._kick, self.check_interval_s)
            self._kick.clear()
            try:
                await self.check_timeouts()
                if loop.time() - self._last_flush >= min(self.flush_interval_s, self.check_interval_s * 12):
                    self._last_flush = loop.time()
                    await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence timeout check failed")
