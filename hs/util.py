"""Small helpers shared across the server: time, random IDs, JSON, an LRU cache."""

from __future__ import annotations

import asyncio
import secrets
import string
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import orjson

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_ALNUM = string.ascii_letters + string.digits


def now_ms() -> int:
    return int(time.time() * 1000)


def random_string(length: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def json_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def json_loads(data: str | bytes) -> Any:
    return orjson.loads(data)


class LruCache(Generic[K, V]):
    """A bounded dict that evicts the least recently used entry.

    Hits, misses and evictions are plain ints (one increment per call); hs/metrics.py reads them at
    scrape time for every cache, exported under `name` (by default the module and line that made it)."""

    def __init__(self, max_size: int, name: str | None = None) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        if name is None:
            caller = sys._getframe(1)
            name = f"{caller.f_globals.get('__name__', '?')}:{caller.f_lineno}"
        self.name = name
        _CACHES.add(self)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: V | None = None) -> V | None:
        try:
            self._data.move_to_end(key)
        except KeyError:
            self.misses += 1
            return default
        self.hits += 1
        return self._data[key]

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def set(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)
            self.evictions += 1

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def invalidate_where(self, predicate: Any) -> None:
        for k in [k for k, v in self._data.items() if predicate(k, v)]:
            del self._data[k]

    def clear(self) -> None:
        self._data.clear()


# Every LruCache alive, for the metrics collector (weak: a dropped cache leaves the scrape).
_CACHES: weakref.WeakSet[LruCache[Any, Any]] = weakref.WeakSet()


def named_caches() -> list[LruCache[Any, Any]]:
    return list(_CACHES)


class KeyedLocks:
    """One asyncio lock per key (a room, a user), dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def like_pattern(term: str, fold_case: bool = True) -> str:
    """A substring pattern for LIKE ... ESCAPE '\\' (case-folded unless told not to), with the
    term's wildcards escaped."""
    text = term.lower() if fold_case else term
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def wait_set_or_timeout(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set, or set it after `timeout` seconds; the caller clears it.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that races the event, and a
    loop cancelled at shutdown would then go on (its stopper waiting forever)."""
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop and wait until it has ended, whatever it ended with (a stopping
    server has no one to report a loop's last error to: the loop logs its own failures)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
