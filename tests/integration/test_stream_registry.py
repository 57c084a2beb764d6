"""A stream added to the registry alone (hs/streams/registry.py) is built, subscribed, set up, replicated,
caught up and given its section in sync tokens by every process: nothing else needs to know of it.

Two in-process instances (main, which writes the stream, and a generic worker) share PostgreSQL and a
real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from hs.app import create_app
from hs.config import parse_config
from hs.events.signing import SigningKey
from hs.server import HomeServer
from hs.streams import registry
from hs.streams.base import Stream
from hs.streams.positions import LocalCounter, PositionTracker
from hs.streams.tokens import StreamToken
from tests.harness import OPEN_LIMITS, Client
from tests.services import ThrowawayRedis, create_database, drop_database, free_port


class NotesStream(Stream):
    """A stream only this test knows: notes for a user, one writer. What a real stream keeps in a
    table is kept in a class attribute, which both instances (one Python process) see."""

    NAME = "test_notes"
    stored: ClassVar[int] = 0  # the highest position "persisted"
    set_up: ClassVar[list[str]] = []
    caught_up: ClassVar[list[str]] = []
    messages: ClassVar[list[tuple[str, int]]] = []
    tracker: PositionTracker | None = None

    async def setup(self) -> None:
        self.set_initial_positions(dict.fromkeys(self.writers, NotesStream.stored))
        if self.is_writer:
            self.tracker = PositionTracker(LocalCounter(NotesStream.stored), NotesStream.stored)
        NotesStream.set_up.append(self.ctx.instance_name)

    async def catch_up(self) -> None:
        NotesStream.caught_up.append(self.ctx.instance_name)
        for writer in self.writers:
            self.on_position(writer, NotesStream.stored, everyone=True)

    def handle_message(self, msg: dict[str, Any]) -> None:
        NotesStream.messages.append((self.ctx.instance_name, int(msg["position"])))
        super().handle_message(msg)

    async def write(self, user_id: str) -> int:
        assert self.tracker is not None
        async with self.tracker.allocate() as pos:
            NotesStream.stored = max(NotesStream.stored, pos)
        await self.publish(self.tracker.persisted_upto, row_position=pos, users=[user_id])
        return pos


@pytest.fixture
async def two_instances(pg_base_dsn: str, tmp_path: Path) -> AsyncIterator[tuple[HomeServer, HomeServer, str]]:
    redis = ThrowawayRedis()
    redis_url = redis.start()
    dsn = await create_database(pg_base_dsn)
    main_port, worker_port, main_repl, worker_repl = (free_port() for _ in range(4))
    raw: dict[str, Any] = {
        "server_name": "test.local",
        "database": {"engine": "postgres", "dsn": dsn},
        "redis": {"enabled": True, "url": redis_url},
        "worker_replication_secret": "secret",
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": 4,
        "rc_message": OPEN_LIMITS, "rc_registration": OPEN_LIMITS,
        "rc_login": {"address": OPEN_LIMITS, "account": OPEN_LIMITS, "failed_attempts": OPEN_LIMITS},
        "listeners": [{"port": main_port, "resources": ["client"]}, {"port": main_repl, "resources": ["replication"]}],
        "instance_map": {"main": {"host": "127.0.0.1", "port": main_repl},
                         "worker": {"host": "127.0.0.1", "port": worker_repl}},
        "stream_writers": {"test_notes": "main"},
        "workers": {"worker": {"app": "generic_worker", "listeners": [
            {"port": worker_port, "resources": ["client"]}, {"port": worker_repl, "resources": ["replication"]}]}},
    }
    key = SigningKey.generate()
    NotesStream.stored = 0
    for record in (NotesStream.set_up, NotesStream.caught_up, NotesStream.messages):
        record.clear()
    with registry.registered(NotesStream):
        config = parse_config(raw, config_dir=str(tmp_path))
        main, worker = HomeServer(config, "main", key), HomeServer(config, "worker", key)
        runners = []
        try:
            for hs, port in ((main, main_port), (worker, worker_port)):
                await hs.start()
                listener = next(lst for lst in config.listeners_for(hs.instance_name) if lst.port == port)
                runner = web.AppRunner(create_app(hs, listener), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", port).start()
                runners.append(runner)
            yield main, worker, f"http://127.0.0.1:{worker_port}"
        finally:
            for runner in runners:
                await runner.cleanup()
            await worker.stop()
            await main.stop()
            redis.stop()
            await drop_database(dsn)


async def test_a_stream_known_only_to_the_registry_runs_everywhere(two_instances: Any) -> None:
    main, worker, worker_url = two_instances
    notes_on_main, notes_on_worker = main.streams["test_notes"], worker.streams["test_notes"]
    assert isinstance(notes_on_main, NotesStream) and isinstance(notes_on_worker, NotesStream)
    assert {"main", "worker"} <= set(NotesStream.set_up)
    assert notes_on_main.is_writer and not notes_on_worker.is_writer

    alice = Client(worker_url)
    try:
        await alice.register("alice" + uuid.uuid4().hex[:6])
        assert alice.user_id is not None
        before = StreamToken.decode((await alice.sync())["next_batch"])
        # A long-poll on the worker for alice is woken by a note written on main, through Redis.
        woken = asyncio.create_task(worker.notifier.wait(alice.user_id, [], 10.0))
        await asyncio.sleep(0.05)
        position = await notes_on_main.write(alice.user_id)
        await asyncio.wait_for(woken, 5.0)
        assert ("worker", position) in NotesStream.messages
        # The new section is in the worker's sync tokens, after every existing one.
        token = StreamToken.decode((await alice.sync())["next_batch"])
        assert token.get("test_notes") == position > before.get("test_notes")
        assert (await alice.sync())["next_batch"].split("_")[-1] == str(position)
        assert len(registry.stream_names()) == len((await alice.sync())["next_batch"].split("_"))

        # Messages lost (Redis away): a catch-up re-reads the stored position in every stream.
        NotesStream.stored += 5
        catch_ups = NotesStream.caught_up.count("worker")
        await worker.catch_up()
        assert NotesStream.caught_up.count("worker") == catch_ups + 1
        assert worker.notifier.current.get("test_notes") == NotesStream.stored
    finally:
        await alice.close()
