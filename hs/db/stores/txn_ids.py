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
from collections import OrderedDict
from collections.abc import Awaitable, Callable

# (room_id, txn_id) -> event_id
DeviceTxns = dict[tuple[str, str], str]
Loader = Callable[[str, str, int], Awaitable[list[tuple[str, str, str]]]]

# A device with more stored IDs than this (the table keeps a day of them) is not held in memory.
MAX_PER_DEVICE = 1000
# Memory bound: the least recently used devices are dropped (and read again when next used) beyond
# this many devices or this many IDs in all.
MAX_DEVICES = 20000
MAX_ENTRIES = 200_000
NOT_INDEXED = object()


class KnownTransactionIds:
    def __init__(self, max_devices: int = MAX_DEVICES, max_entries: int = MAX_ENTRIES) -> None:
        # (user, device) -> its stored IDs, or None while the device is not indexed (too many IDs);
        # least recently used first.
        self._devices: OrderedDict[tuple[str, str], DeviceTxns | None] = OrderedDict()
        self._entries = 0
        self._max_devices, self._max_entries = max_devices, max_entries
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def lookup(self, user_id: str, device_id: str, room_id: str, txn_id: str,
                     load: Loader) -> str | None | object:
        """The stored event ID, None if the ID was never stored, or NOT_INDEXED (ask the database)."""
        key = (user_id, device_id)
        if key in self._loading or key not in self._devices:
            await self._load(key, load)
        if key not in self._devices:
            return NOT_INDEXED  # dropped again at once to stay within the memory bound
        self._devices.move_to_end(key)
        txns = self._devices[key]
        if txns is None:
            return NOT_INDEXED
        return txns.get((room_id, txn_id))

    def add(self, user_id: str, device_id: str, room_id: str, txn_id: str, event_id: str) -> None:
        """Record an ID whose transaction committed (a device not loaded yet reads it when it loads)."""
        key = (user_id, device_id)
        txns = self._devices.get(key)
        if txns is None:
            return
        if (room_id, txn_id) not in txns:
            self._entries += 1
        txns[(room_id, txn_id)] = event_id
        if len(txns) > MAX_PER_DEVICE:
            self._set(key, None)
        self._trim()

    def _set(self, key: tuple[str, str], txns: DeviceTxns | None) -> None:
        old = self._devices.pop(key, None)
        self._entries -= len(old) if old else 0
        self._devices[key] = txns
        self._entries += len(txns) if txns else 0

    def _drop(self, key: tuple[str, str]) -> None:
        old = self._devices.pop(key, None)
        self._entries -= len(old) if old else 0

    def _trim(self) -> None:
        while self._devices and (len(self._devices) > self._max_devices or self._entries > self._max_entries):
            self._drop(next(iter(self._devices)))

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
            self._set(key, txns)
            try:
                rows = await load(key[0], key[1], MAX_PER_DEVICE + 1)
            except BaseException:
                self._drop(key)
                raise
            if self._devices.get(key) is not txns:
                return  # dropped meanwhile (memory bound): the next lookup reads again
            if len(rows) > MAX_PER_DEVICE:
                self._set(key, None)
            else:
                for room_id, txn_id, event_id in rows:
                    if (room_id, txn_id) not in txns:
                        txns[(room_id, txn_id)] = event_id
                        self._entries += 1
            self._trim()
        finally:
            del self._loading[key]
            future.set_result(None)
