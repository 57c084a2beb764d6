"""Wakes long-polling /sync requests the moment something that concerns them is persisted.

Listeners register the user and the rooms they care about; `notify` wakes exactly the listeners whose
user or rooms are named, with no polling, so wake-up latency is one event-loop hop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping

from prometheus_client import Gauge

from hs.metrics import REPLICATION_LAG
from hs.streams.tokens import StreamToken

SYNC_WAITERS = Gauge("hs_sync_waiters", "Long-polling requests waiting for updates")


class LongPollInterrupted(Exception):
    """Raised by `Notifier.wait` once the server is stopping: the request should be answered as if its
    timeout had expired (hs/app.py does), so the client gets a normal, empty response at once."""


class _Listener:
    __slots__ = ("future", "user_id", "room_ids")

    def __init__(self, user_id: str, room_ids: frozenset[str]) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.user_id = user_id
        self.room_ids = room_ids

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Notifier:
    def __init__(self) -> None:
        self._by_user: dict[str, set[_Listener]] = defaultdict(set)
        self._by_room: dict[str, set[_Listener]] = defaultdict(set)
        self._all: set[_Listener] = set()
        self.stopping = False
        # The highest positions this process has applied per stream; a waiter whose token is behind
        # returns at once.
        self.current = StreamToken({})
        self._position_waiters: list[tuple[str, str | None, int, asyncio.Future[None]]] = []

    def advance(self, stream: str, position: int, writers: Mapping[str, int] | None = None) -> None:
        """`stream` has reached `position` (its minimum over writers) and, for a multi-writer stream,
        each writer the position in `writers` (instance name -> position; never lower than before)."""
        if writers is not None and len(writers) > 1:
            floor = min(writers.values())
            for instance, instance_position in writers.items():
                REPLICATION_LAG.labels(stream, instance).set(instance_position - floor)
        if writers is not None and len(writers) > 1:
            updated = self.current.with_writer_positions(stream, writers)
            if not updated.stream_is_after(self.current, stream):
                return
            self.current = updated
        elif position > self.current.get(stream):
            self.current = self.current.with_position(stream, position)
        else:
            return
        if self._position_waiters:
            still = []
            for name, writer, pos, fut in self._position_waiters:
                if fut.done():
                    continue
                if name == stream and self._reached(stream, writer, pos):
                    fut.set_result(None)
                else:
                    still.append((name, writer, pos, fut))
            self._position_waiters = still

    def _reached(self, stream: str, writer: str | None, position: int) -> bool:
        if writer is None:
            return self.current.get(stream) >= position
        return self.current.writer_position(stream, writer) >= position

    async def wait_for_position(self, stream: str, position: int, timeout: float,
                                writer: str | None = None) -> bool:
        """Return once this process has applied `stream` up to `position` — `writer`'s position when
        one is named (its rows only), else the minimum over writers. False after `timeout`."""
        if self._reached(stream, writer, position):
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._position_waiters.append((stream, writer, position, fut))
        # A timer rather than asyncio.wait_for, which on Python 3.11 can swallow a cancellation.
        timer = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
        return self._reached(stream, writer, position)

    def notify(self, stream: str, position: int, users: Iterable[str] = (), rooms: Iterable[str] = (),
               everyone: bool = False, writers: Mapping[str, int] | None = None) -> None:
        self.advance(stream, position, writers)
        if everyone:
            for listener in list(self._all):
                listener.wake()
            return
        for user in users:
            for listener in list(self._by_user.get(user, ())):
                listener.wake()
        for room in rooms:
            for listener in list(self._by_room.get(room, ())):
                listener.wake()

    def interrupt_long_polls(self) -> None:
        """The server is stopping: every waiting long-poll, and any that starts from now on, raises
        `LongPollInterrupted` instead of waiting (aiohttp would otherwise wait for them to time out)."""
        self.stopping = True
        for listener in list(self._all):
            listener.wake()

    async def wait(self, user_id: str, room_ids: Iterable[str], timeout: float) -> None:
        """Return when something for this user or these rooms is notified, or after `timeout` seconds;
        raise `LongPollInterrupted` when the server stops meanwhile."""
        if self.stopping:
            raise LongPollInterrupted
        listener = _Listener(user_id, frozenset(room_ids))
        self._all.add(listener)
        self._by_user[user_id].add(listener)
        for room in listener.room_ids:
            self._by_room[room].add(listener)
        SYNC_WAITERS.inc()
        # The timeout wakes the listener like a notification does. Awaiting the bare future (no
        # `wait_for`, no `shield`) makes the wake-up one event-loop hop: the woken /sync runs before
        # the sender's own response, which needs two.
        timer = asyncio.get_running_loop().call_later(timeout, listener.wake)
        try:
            await listener.future
        finally:
            timer.cancel()
            SYNC_WAITERS.dec()
            self._all.discard(listener)
            self._discard(self._by_user, user_id, listener)
            for room in listener.room_ids:
                self._discard(self._by_room, room, listener)
        if self.stopping:
            raise LongPollInterrupted

    @staticmethod
    def _discard(index: dict[str, set[_Listener]], key: str, listener: _Listener) -> None:
        bucket = index.get(key)
        if bucket is not None:
            bucket.discard(listener)
            if not bucket:
                del index[key]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
