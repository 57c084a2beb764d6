"""Stream positions and tokens: the watermark never passes an in-flight position; tokens round-trip."""

from __future__ import annotations

import asyncio

import pytest

from hs.streams.positions import LocalCounter, PositionTracker
from hs.streams.tokens import InvalidToken, StreamToken, TopologicalToken


async def test_tracker_waits_for_earlier_positions() -> None:
    tracker = PositionTracker(LocalCounter(0), 0)
    first_done = asyncio.Event()
    release_first = asyncio.Event()

    async def slow() -> None:
        async with tracker.allocate() as pos:
            assert pos == 1
            first_done.set()
            await release_first.wait()

    task = asyncio.create_task(slow())
    await first_done.wait()
    async with tracker.allocate() as pos:
        assert pos == 2
    # 2 committed but 1 is in flight: readers may only see up to 0.
    assert tracker.persisted_upto == 0
    release_first.set()
    await task
    assert tracker.persisted_upto == 2


async def test_failed_allocation_does_not_block_the_stream() -> None:
    tracker = PositionTracker(LocalCounter(10), 10)
    with pytest.raises(RuntimeError):
        async with tracker.allocate():
            raise RuntimeError("transaction failed")
    async with tracker.allocate() as pos:
        assert pos == 12
    assert tracker.persisted_upto == 12


async def test_idle_writer_claims_shared_positions() -> None:
    source = LocalCounter(0)
    tracker = PositionTracker(source, 0)
    await source.next()
    await source.next()  # another writer took 1 and 2
    assert await tracker.advance_idle()
    assert tracker.persisted_upto == 2


def test_stream_token_round_trip_and_old_tokens() -> None:
    tok = StreamToken({"events": 42, "typing": 3})
    assert StreamToken.decode(tok.encode()) == StreamToken.decode(tok.encode())
    assert StreamToken.decode(tok.encode()).get("events") == 42
    assert StreamToken.decode("s7").get("events") == 7  # a token from before other streams existed
    assert StreamToken.decode("s7").get("typing") == 0
    for bad in ("", "x1", "s", "s1_a", "s-1", "s" + "_".join(["1"] * 50)):
        with pytest.raises(InvalidToken):
            StreamToken.decode(bad)


def test_topological_token() -> None:
    t = TopologicalToken(5, 99)
    assert TopologicalToken.decode(t.encode()) == t
    assert TopologicalToken(4, 100) < TopologicalToken(5, 1)
    with pytest.raises(InvalidToken):
        TopologicalToken.decode("t5")


async def test_idle_claim_waits_for_an_allocation_in_progress() -> None:
    """The shared source has handed out a position this writer has not registered yet: an idle
    claim at that moment must not cover it (readers would skip the event)."""

    class SlowSource(LocalCounter):
        def __init__(self) -> None:
            super().__init__(0)
            self.handed_out = asyncio.Event()
            self.release = asyncio.Event()

        async def next_many(self, n: int) -> list[int]:
            out = [await self.next() for _ in range(n)]
            self.handed_out.set()
            await self.release.wait()  # the reply is still on its way back
            return out

    source = SlowSource()
    tracker = PositionTracker(source, 0)
    committed = asyncio.Event()

    async def persist() -> None:
        async with tracker.allocate_many(1) as positions:
            assert positions == [1]
            await committed.wait()

    writer = asyncio.create_task(persist())
    await source.handed_out.wait()
    claim = asyncio.create_task(tracker.advance_idle())
    await asyncio.sleep(0.01)
    source.release.set()
    assert await claim is False or tracker.persisted_upto < 1
    assert tracker.persisted_upto == 0
    committed.set()
    await writer
    assert tracker.persisted_upto == 1
