"""Which client transaction IDs a room's writer has stored, answered from memory.

Every PUT /send first asks whether its (user, device, room, txn_id) was stored before (a retry must
get the original event back). Asking the database costs a round trip on the hot path, and the answer
is almost always "no". The room's events writer is the only process that stores transaction IDs for
the room, so once it has read a device's stored IDs it can keep them exact in memory: it adds each
one as its transaction commits. Lookups for rooms this process does not write, and for devices with
too many stored IDs to hold, still go to the database. (IDs the background task prunes from the table
after a day may still be answered from memory until a restart: a retry that late gets the original
event, which is still what idempotency asks.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hs.util import LruCache

# (room_id, txn_id) -> event_id
DeviceTxns = dict[tuple[str, str], str]
Loader = Callable[[str, str, int], Awaitable[list[tuple[str, str, str]]]]

# A device with more stored IDs than this (the table keeps a day of them) is not held in memory.
MAX_PER_DEVICE = 2000
NOT_INDEXED = object()


class KnownTransactionIds:
    def __init__(self, max_devices: int = 20000) -> None:
        # (user, device) -> its stored IDs, or None while the device is not indexed (too many IDs).
        self._devices: LruCache[tuple[str, str], DeviceTxns | None] = LruCache(max_devices)
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def lookup(self, user_id: str, device_id: str, room_id: str, txn_id: str,
                     load: Loader) -> str | None | object:
        """The stored event ID, None if the ID was never stored, or NOT_INDEXED (ask the database)."""
        key = (user_id, device_id)
        if key in self._loading or key not in self._devices:
            await self._load(key, load)
        txns = self._devices.get(key)
        if txns is None:
            return NOT_INDEXED
        return txns.get((room_id, txn_id))

    def add(self, user_id: str, device_id: str, room_id: str, txn_id: str, event_id: str) -> None:
        """Record an ID whose transaction committed (a device not loaded yet reads it when it loads)."""
        txns = self._devices.get((user_id, device_id))
        if txns is None:
            return
        txns[(room_id, txn_id)] = event_id
        if len(txns) > MAX_PER_DEVICE:
            self._devices.set((user_id, device_id), None)

    async def _load(self, key: tuple[str, str], load: Loader) -> None:
        pending = self._loading.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            # Registered before the read: an ID committed while the read runs is either in the rows
            # (committed first) or added to this dict by `add` (committed after the entry exists).
            txns: DeviceTxns = {}
            self._devices.set(key, txns)
            try:
                rows = await load(key[0], key[1], MAX_PER_DEVICE + 1)
            except BaseException:
                self._devices.pop(key)
                raise
            if len(rows) > MAX_PER_DEVICE:
                self._devices.set(key, None)
            else:
                for room_id, txn_id, event_id in rows:
                    txns.setdefault((room_id, txn_id), event_id)
        finally:
            del self._loading[key]
            future.set_result(None)
