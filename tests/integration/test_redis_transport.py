"""The Redis replication transport against a real Redis: delivery, per-stream channels, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hs.replication.redis import RedisTransport
from tests.services import ThrowawayRedis


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    server = ThrowawayRedis()
    try:
        yield server.start()
    finally:
        server.stop()


async def test_positions_reach_subscribers_of_that_stream_only(redis_url: str) -> None:
    got: list[dict[str, Any]] = []
    typing_got: list[dict[str, Any]] = []
    reader = RedisTransport(redis_url, "example.org")
    reader.subscribe("events", got.append)
    writer = RedisTransport(redis_url, "example.org")
    other = RedisTransport(redis_url, "other.org")
    other.subscribe("typing", typing_got.append)
    await reader.start()
    await writer.start()
    await other.start()
    try:
        await writer.publish("events", "persister1", 7, {"rooms": ["!r:example.org"], "new_field": 1})
        await writer.publish("typing", "main", 3, {})
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [{"v": 1, "stream": "events", "instance": "persister1", "position": 7,
                        "rooms": ["!r:example.org"], "new_field": 1}]
        assert typing_got == []  # another server's channel namespace
    finally:
        for t in (reader, writer, other):
            await t.stop()


async def test_reader_reconnects_and_catches_up_after_redis_restart() -> None:
    server = ThrowawayRedis()
    url = server.start()
    got: list[int] = []
    caught_up = asyncio.Event()
    reader = RedisTransport(url, "example.org")
    reader.subscribe("events", lambda m: got.append(m["position"]))

    async def catch_up() -> None:
        caught_up.set()

    reader.on_reconnect(catch_up)
    writer = RedisTransport(url, "example.org")
    await reader.start()
    await writer.start()
    try:
        port = server.port
        server.stop()
        await asyncio.sleep(0.3)
        server.port = port
        server.start()
        await asyncio.wait_for(caught_up.wait(), 15)
        await asyncio.sleep(0.2)
        await writer.publish("events", "main", 9, {})
        for _ in range(100):
            if 9 in got:
                break
            await asyncio.sleep(0.05)
        assert 9 in got
    finally:
        await reader.stop()
        await writer.stop()
        server.stop()
