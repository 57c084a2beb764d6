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


# -- per-writer positions ---------------------------------------------------------------------------------
def test_multi_writer_token_round_trips_and_compacts() -> None:
    tok = StreamToken({"typing": 3}).with_writer_positions("events", {"ep1": 10, "ep2": 17})
    assert tok.get("events") == 10
    assert tok.writer_position("events", "ep1") == 10
    assert tok.writer_position("events", "ep2") == 17
    assert tok.writer_position("events", "a writer the token does not name") == 10
    text = tok.encode()
    assert text.startswith("sm10~") and "_" not in text.split("_")[0][1:]
    back = StreamToken.decode(text)
    assert back == tok
    assert back.get("typing") == 3
    # Writers that agree compact to the plain number, as tokens from before per-writer positions.
    same = StreamToken({}).with_writer_positions("events", {"ep1": 20, "ep2": 20})
    assert same.encode().startswith("s20_")
    # An old plain token: every writer at its number.
    old = StreamToken.decode("s15_0_0")
    assert old.writer_position("events", "ep1") == old.writer_position("events", "ep2") == 15


def test_multi_writer_token_max_min_and_ordering() -> None:
    a = StreamToken({}).with_writer_positions("events", {"ep1": 10, "ep2": 30})
    b = StreamToken({}).with_writer_positions("events", {"ep1": 20, "ep2": 25})
    top = a.max(b)
    assert (top.writer_position("events", "ep1"), top.writer_position("events", "ep2")) == (20, 30)
    assert top.get("events") == 20
    low = a.min(b)
    assert (low.writer_position("events", "ep1"), low.writer_position("events", "ep2")) == (10, 25)
    assert a.is_after(b) and b.is_after(a)  # each is ahead for one writer
    assert top.is_after(a) and not a.is_after(top)
    assert not top.is_after(top) and not top.stream_is_after(top, "events")
    assert top.maximum("events") == 30


def test_stream_token_refuses_what_it_never_wrote() -> None:
    for bad in ("sm5", "sm5~", "sm5~ab", "sm5~ab.x", "sm5~a-b.7", "s²", "s1_²", "s" + "9" * 20,
                "s9223372036854775808", "sm1~" + "~".join(f"k{i}.2" for i in range(65)), "s1" + "_1" * 9,
                "t1-²", "s" + "1" * 5000):
        with pytest.raises(InvalidToken):
            StreamToken.decode(bad)
    for bad in ("t1", "t-1-5", "t1-99999999999999999999", "t²-1"):
        with pytest.raises(InvalidToken):
            TopologicalToken.decode(bad)


def test_a_writers_notifications_wait_for_that_writer_only() -> None:
    """With two event writers, rows of a writer that is ahead are announced as soon as that writer's
    position covers them, whatever the other writer's position (it may be down)."""
    from types import SimpleNamespace

    from hs.streams.base import Stream
    from hs.streams.notifier import Notifier

    class Events(Stream):
        NAME = "events"

    notifier = Notifier()
    woken: list[tuple[set[str], int]] = []
    real_notify = notifier.notify

    def notify(stream: str, position: int, users=(), rooms=(), everyone=False, writers=None):  # type: ignore[no-untyped-def]
        woken.append((set(rooms), notifier.current.writer_position("events", "ep1") if writers else -1))
        real_notify(stream, position, users, rooms, everyone, writers)

    notifier.notify = notify  # type: ignore[method-assign]
    writers = SimpleNamespace(writers_of=lambda _name: ["ep1", "ep2"])
    ctx = SimpleNamespace(notifier=notifier, instance_name="reader", config=SimpleNamespace(stream_writers=writers))
    stream = Events(ctx)  # type: ignore[arg-type]
    stream.set_initial_positions({"ep1": 5, "ep2": 5})
    # ep1 commits 8 while 7 is in flight: held back until ep1's own position reaches 8.
    stream.on_position("ep1", 6, rooms=frozenset({"!a"}), notify_at=8)
    assert woken == []
    stream.on_position("ep1", 8)
    assert woken and woken[-1][0] == {"!a"}
    # ep2 never moves (it is down): ep1's rows are still announced, and the token says so per writer.
    stream.on_position("ep1", 12, rooms=frozenset({"!b"}), notify_at=12)
    assert woken[-1][0] == {"!b"}
    assert notifier.current.writer_position("events", "ep1") == 12
    assert notifier.current.writer_position("events", "ep2") == 5
    assert notifier.current.get("events") == 5


async def test_waiting_for_one_writers_position() -> None:
    from hs.streams.notifier import Notifier

    notifier = Notifier()
    notifier.advance("events", 5, {"ep1": 5, "ep2": 5})
    waiter = asyncio.create_task(notifier.wait_for_position("events", 9, 5.0, writer="ep1"))
    await asyncio.sleep(0)
    notifier.advance("events", 5, {"ep1": 9, "ep2": 5})
    assert await asyncio.wait_for(waiter, 1.0) is True
    # The minimum has not reached 9: a wait for it times out and says so.
    assert await notifier.wait_for_position("events", 9, 0.05) is False


def test_every_registered_stream_reaches_sync_or_says_it_does_not() -> None:
    from hs.services.sync_sections import SECTIONS, TOKEN_ONLY, check_sections
    from hs.streams.registry import stream_names

    assert check_sections(stream_names()) == []
    assert check_sections((*stream_names(), "new_stream")) == [
        "stream 'new_stream' has no /sync section (hs/services/sync_sections.py)"]
    # Each section belongs to a registered stream.
    assert {s.STREAM for s in SECTIONS} | TOKEN_ONLY <= set(stream_names())


def test_stream_writers_config_is_checked_against_the_registry() -> None:
    from hs.config import parse_config

    config = parse_config({"server_name": "x", "stream_writers": {"typing": "main", "events": ["main"]}})
    assert config.stream_writers.writers_of("typing") == ["main"]
    assert config.stream_writers.events == ["main"]
    assert config.stream_writers.writers_of("receipts") == ["main"]  # not configured: main
    # Every problem is named, one per line: an unknown stream and a second writer where one is allowed.
    with pytest.raises(Exception, match="stream_writers.typo: not a stream") as refused:
        parse_config({"server_name": "x", "stream_writers": {"typo": "main", "typing": ["main", "main"]}})
    assert "stream_writers.typing: only one writer is supported" in str(refused.value)
