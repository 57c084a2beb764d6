"""The typing stream: who is typing in which room, in memory only, one writer.

The writer holds the truth (a timer per typing user; expiry removes them by itself). Each change to a
room's set of typing users gets the next position and is published with the room's whole new set, so
every process (the writer included, through its own replication message) keeps the latest set and the
position it changed at per room; /sync returns the rooms whose set changed in its token range.

Positions start at 0 when the writer starts: a client's token from before a restart may be ahead,
and /sync reads such a token's typing position as 0 (see `clamp`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from hs.streams.base import Stream, StreamContext

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000
# Rooms nobody types in any more are forgotten once there are this many, oldest change first.
MAX_IDLE_ROOMS = 10_000


class TypingStream(Stream):
    NAME = "typing"
    WRITE_GROUPS = ("typing",)

    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        # Writer only: room -> user -> the timer that ends their typing.
        self._timers: dict[str, dict[str, asyncio.TimerHandle]] = {}
        self._last_position = 0
        self._publish_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # Every process: room -> (position of the last change, users typing after it).
        self._rooms: dict[str, tuple[int, tuple[str, ...]]] = {}
        # The writer's start time: positions restart at 0 with each epoch, so a reader that sees a new
        # epoch forgets the old positions instead of ignoring the "lower" new ones.
        self.epoch = time.time_ns() if self.is_writer else 0
        # Writer only: told (room, user, typing, changed) of every set, refresh and expiry, so that the
        # typing service can tell other servers (a stream calls no service; see hs/services/typing.py).
        self.on_user_typing: Callable[[str, str, bool, bool], None] | None = None

    async def setup(self) -> None:
        self.set_initial_positions(dict.fromkeys(self.writers, 0))
        # In the background: the writer may start after us, and its next change brings us up to date.
        task = asyncio.get_running_loop().create_task(self.catch_up())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def snapshot(self) -> dict[str, Any]:
        """The writer's whole state, for readers that start or reconnect (pub/sub keeps no history)."""
        return {"position": self._last_position, "epoch": self.epoch,
                "rooms": {room: sorted(timers) for room, timers in self._timers.items() if timers}}

    async def catch_up(self) -> None:
        """Readers: fetch the writer's state over HTTP replication and apply it."""
        if self.is_writer or not self.ctx.config.workers:
            return
        writer = self.writers[0]
        try:
            snap = await self.ctx.replication_client().call(writer, "typing_snapshot", {})
        except Exception as e:  # the writer may not be up yet; its next change brings us up to date
            logger.warning("could not fetch typing state from %s: %s", writer, e)
            return
        self._enter_epoch(int(snap.get("epoch") or 0))
        position = int(snap["position"])
        rooms: dict[str, list[str]] = snap.get("rooms") or {}
        changed = set()
        for room_id, (_pos, was_typing) in list(self._rooms.items()):
            if was_typing and room_id not in rooms:
                self._rooms[room_id] = (position, ())
                changed.add(room_id)
        for room_id, now_typing in rooms.items():
            self._rooms[room_id] = (position, tuple(now_typing))
            changed.add(room_id)
        self.on_position(writer, position, rooms=frozenset(changed))

    def subscribe(self) -> None:
        super().subscribe()
        self.ctx.replication.subscribe("events", self.on_events_message)

    async def close(self) -> None:
        for timers in self._timers.values():
            for handle in timers.values():
                handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- writing (the writer) --------------------------------------------------------------------------
    async def set_typing(self, room_id: str, user_id: str, typing: bool, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                         ) -> None:
        if not self.is_writer:
            raise self.not_writer()
        timers = self._timers.setdefault(room_id, {})
        old = timers.pop(user_id, None)
        if old is not None:
            old.cancel()
        if typing:
            delay = max(0, min(timeout_ms, MAX_TIMEOUT_MS)) / 1000
            timers[user_id] = asyncio.get_running_loop().call_later(delay, self._expire, room_id, user_id)
            changed = old is None
        else:
            changed = old is not None
            if not timers:
                del self._timers[room_id]
        if self.on_user_typing is not None and (typing or changed):
            self.on_user_typing(room_id, user_id, typing, changed)
        if changed:
            await self._publish_room(room_id)

    def _expire(self, room_id: str, user_id: str) -> None:
        timers = self._timers.get(room_id)
        if timers is None or user_id not in timers:
            return
        del timers[user_id]
        if not timers:
            del self._timers[room_id]
        if self.on_user_typing is not None:
            self.on_user_typing(room_id, user_id, False, True)
        task = asyncio.get_running_loop().create_task(self._publish_room(room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_room(self, room_id: str) -> None:
        # One at a time, so positions reach the transport in order.
        async with self._publish_lock:
            self._last_position += 1
            position = self._last_position
            users = sorted(self._timers.get(room_id, {}))
            try:
                await self.publish(position, rooms=[room_id], epoch=self.epoch,
                                   typing={"room_id": room_id, "user_ids": users})
            except Exception:
                logger.exception("could not publish typing position %d", position)

    def on_events_message(self, msg: dict[str, Any]) -> None:
        """Events persisted: a typing user whose membership changed may have left the room; if so they
        stop typing there at once rather than at their timeout."""
        if not self._timers:
            return
        users = msg.get("users") or ()
        rooms = msg.get("rooms") or ()
        candidates = [(r, u) for r in rooms for u in users if u in self._timers.get(r, {})]
        if candidates:
            task = asyncio.get_running_loop().create_task(self._drop_departed(candidates))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop_departed(self, candidates: list[tuple[str, str]]) -> None:
        for room_id, user_id in candidates:
            try:
                membership = await self.ctx.event_store.get_membership(room_id, user_id)
                if membership is None or membership[0] != "join":
                    await self.set_typing(room_id, user_id, False)
            except Exception:
                logger.exception("could not check %s's membership of %s for typing", user_id, room_id)

    # -- reading (every process) -----------------------------------------------------------------------
    def _enter_epoch(self, epoch: int) -> None:
        if epoch and epoch != self.epoch and not self.is_writer:
            self.epoch = epoch
            self._rooms = {room: (0, users) for room, (_pos, users) in self._rooms.items()}
            for writer in self.positions:
                self.positions[writer] = 0

    def handle_message(self, msg: dict[str, Any]) -> None:
        self._enter_epoch(int(msg.get("epoch") or 0))
        data = msg.get("typing")
        if isinstance(data, dict) and isinstance(data.get("room_id"), str):
            position = int(msg["position"])
            room_id = data["room_id"]
            known = self._rooms.get(room_id)
            if known is None or known[0] < position:
                self._rooms.pop(room_id, None)  # re-insert: the dict stays ordered by last change
                self._rooms[room_id] = (position, tuple(data.get("user_ids") or ()))
                self._forget_idle_rooms()
        super().handle_message(msg)

    def _forget_idle_rooms(self) -> None:
        if len(self._rooms) <= MAX_IDLE_ROOMS:
            return
        for room_id in [r for r, (_pos, users) in self._rooms.items() if not users]:
            if len(self._rooms) <= MAX_IDLE_ROOMS // 2:
                break
            del self._rooms[room_id]

    def typing_users(self, room_id: str) -> list[str]:
        known = self._rooms.get(room_id)
        return list(known[1]) if known else []

    def clamp(self, position: int) -> int:
        """A client's typing position, or 0 if it is from before this stream (re)started."""
        return 0 if position > self.current_position() else position

    def changes(self, room_ids: Iterable[str], after: int | None, upto: int) -> dict[str, list[str]]:
        """Typing users of the rooms whose set changed in (after, upto]; with `after` None (an initial
        sync), of the rooms where anyone is typing."""
        out: dict[str, list[str]] = {}
        for room_id in room_ids:
            known = self._rooms.get(room_id)
            if known is None:
                continue
            position, users = known
            if after is None:
                if users:
                    out[room_id] = list(users)
            elif after < position <= upto:
                out[room_id] = list(users)
        return out
