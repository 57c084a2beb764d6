"""The in-memory index of stored transaction IDs that a room's writer answers PUT /send retries from."""

from __future__ import annotations

import asyncio

from hs.db.stores.txn_ids import MAX_PER_DEVICE, NOT_INDEXED, KnownTransactionIds


class FakeTable:
    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.rows = rows
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def load(self, user_id: str, device_id: str, limit: int) -> list[tuple[str, str, str]]:
        self.reads += 1
        snapshot = list(self.rows)  # what the read sees: rows committed before it started
        if self.gate is not None:
            await self.gate.wait()
        return snapshot[:limit]


async def test_a_device_is_read_once_then_answered_from_memory() -> None:
    table = FakeTable([("!r", "t1", "$e1")])
    known = KnownTransactionIds()
    assert await known.lookup("@u", "D", "!r", "t1", table.load) == "$e1"
    assert await known.lookup("@u", "D", "!r", "t2", table.load) is None
    known.add("@u", "D", "!r", "t2", "$e2")
    assert await known.lookup("@u", "D", "!r", "t2", table.load) == "$e2"
    assert table.reads == 1


async def test_an_id_committed_while_the_device_loads_is_not_lost() -> None:
    table = FakeTable([])
    table.gate = asyncio.Event()
    known = KnownTransactionIds()
    first = asyncio.create_task(known.lookup("@u", "D", "!r", "t1", table.load))
    await asyncio.sleep(0)
    # Committed after the read's snapshot: only `add` can tell the index about it.
    known.add("@u", "D", "!r", "t1", "$e1")
    # A concurrent lookup waits for the load instead of answering "never stored" early.
    second = asyncio.create_task(known.lookup("@u", "D", "!r", "t1", table.load))
    await asyncio.sleep(0)
    assert not second.done()
    table.gate.set()
    assert await first == "$e1"
    assert await second == "$e1"
    assert table.reads == 1


async def test_a_device_with_too_many_ids_is_left_to_the_database() -> None:
    table = FakeTable([("!r", f"t{i}", f"$e{i}") for i in range(MAX_PER_DEVICE + 1)])
    known = KnownTransactionIds()
    assert await known.lookup("@u", "D", "!r", "t1", table.load) is NOT_INDEXED
    small = FakeTable([])
    assert await known.lookup("@u", "E", "!r", "t1", small.load) is None
    for i in range(MAX_PER_DEVICE + 1):
        known.add("@u", "E", "!r", f"n{i}", f"$n{i}")
    assert await known.lookup("@u", "E", "!r", "n1", small.load) is NOT_INDEXED


async def test_a_failed_read_leaves_nothing_cached() -> None:
    async def broken(user_id: str, device_id: str, limit: int) -> list[tuple[str, str, str]]:
        raise OSError("database down")

    known = KnownTransactionIds()
    try:
        await known.lookup("@u", "D", "!r", "t1", broken)
    except OSError:
        pass
    table = FakeTable([("!r", "t1", "$e1")])
    assert await known.lookup("@u", "D", "!r", "t1", table.load) == "$e1"


async def test_memory_is_bounded_and_a_dropped_device_is_read_again() -> None:
    tables = {d: FakeTable([("!r", f"{d}-{i}", f"$e{d}{i}") for i in range(30)]) for d in "ABC"}
    known = KnownTransactionIds(max_devices=10, max_entries=70)
    assert await known.lookup("@u", "A", "!r", "A-1", tables["A"].load) == "$eA1"
    assert await known.lookup("@u", "B", "!r", "B-1", tables["B"].load) == "$eB1"
    # A third device pushes the total over 70 IDs: the least recently used (A) is dropped ...
    assert await known.lookup("@u", "C", "!r", "C-1", tables["C"].load) == "$eC1"
    assert known._entries <= 70 and ("@u", "A") not in known._devices
    # ... and read again, correctly, when next used; a committed ID added meanwhile is not lost.
    tables["A"].rows.append(("!r", "A-new", "$new"))
    assert await known.lookup("@u", "A", "!r", "A-new", tables["A"].load) == "$new"
    assert tables["A"].reads == 2
    # A device larger than the whole bound is left to the database.
    big = FakeTable([("!r", f"x{i}", f"$x{i}") for i in range(80)])
    assert await known.lookup("@u", "D", "!r", "x1", big.load) is NOT_INDEXED
