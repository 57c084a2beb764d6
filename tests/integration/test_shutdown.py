"""Stopping `hs run` (a real process, on both engines): SIGTERM answers the waiting /sync long-polls at
once with a valid response, the process exits within 2 s, and what was acknowledged is kept. The
pid_file exists while the process runs and is gone after a clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hs.events.signing import SigningKey, write_signing_key_file
from tests.harness import Client
from tests.services import create_database, drop_database, free_port

pytestmark = pytest.mark.timeout(180)

HS = [sys.executable, "-m", "hs.cli"]
OPEN = {"per_second": 10000, "burst_count": 10000}
LONG_POLLS = 4


class HsProcess:
    """`hs run -c <config>` as a subprocess, its output in a log file."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*HS, "run", "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"hs run did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _write_config(tmp_path: Path, engine: str, dsn: str | None) -> tuple[Path, int]:
    port = free_port()
    database = {"engine": "postgres", "dsn": dsn} if engine == "postgres" else {
        "engine": "sqlite", "path": str(tmp_path / "hs.db")}
    raw: dict[str, Any] = {
        "server_name": "test.local",
        "pid_file": "run/homeserver.pid",
        "listeners": [{"port": port, "resources": ["client", "metrics"]}],
        "database": database,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": 4,
        "signing_key_path": "signing.key",
        "rc_message": OPEN, "rc_registration": OPEN,
        "rc_login": {"address": OPEN, "account": OPEN, "failed_attempts": OPEN},
    }
    cfg = tmp_path / "homeserver.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    write_signing_key_file(tmp_path / "signing.key", SigningKey.generate())
    return cfg, port


@pytest.fixture
async def database(engine: str, request: pytest.FixtureRequest) -> Any:
    """None on SQLite; a fresh PostgreSQL database's DSN, dropped afterwards."""
    if engine != "postgres":
        yield None
        return
    dsn = await create_database(request.getfixturevalue("pg_base_dsn"))
    try:
        yield dsn
    finally:
        await drop_database(dsn)


async def _sync_waiters(base_url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{base_url}/_synapse/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("hs_sync_waiters "):
                return float(line.split()[1])
    return 0.0


async def _user(base_url: str) -> Client:
    c = Client(base_url)
    await c.register("u" + uuid.uuid4().hex[:8])
    return c


async def _long_poll(c: Client, since: str) -> tuple[int, Any, float]:
    status, body = await c.request("GET", "/sync", params={"since": since, "timeout": "30000"})
    return status, body, time.monotonic()


async def _send_slowly(c: Client, room_id: str, release: asyncio.Event) -> tuple[int, Any]:
    """A send whose body arrives in two parts, the second after `release`: a write the server is
    handling when the stop signal arrives."""
    async def body() -> Any:
        yield b'{"msgtype": "m.text", '
        await release.wait()
        yield b'"body": "in flight at SIGTERM"}'

    url = f"{c.base_url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as s, s.put(url, data=body(), headers={
            "Authorization": f"Bearer {c.token}", "Content-Type": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


async def test_sigterm_answers_long_polls_and_exits_within_2s(tmp_path: Path, engine: str,
                                                              database: str | None) -> None:
    cfg, port = _write_config(tmp_path, engine, database)
    pid_path = tmp_path / "run" / "homeserver.pid"
    server = HsProcess(cfg, port, tmp_path / "hs.log")
    server.start()
    clients: list[Client] = []
    try:
        assert server.proc is not None
        assert pid_path.read_text().strip() == str(server.proc.pid)
        sender = await _user(server.base_url)
        room = await sender.create_room(name="shutdown")
        sleepers = [await _user(server.base_url) for _ in range(LONG_POLLS)]
        clients = [sender, *sleepers]
        tokens = [(await c.sync())["next_batch"] for c in sleepers]
        polls = [asyncio.create_task(_long_poll(c, t)) for c, t in zip(sleepers, tokens, strict=True)]
        for _ in range(200):
            if await _sync_waiters(server.base_url) >= LONG_POLLS:
                break
            await asyncio.sleep(0.05)
        assert await _sync_waiters(server.base_url) == LONG_POLLS

        acked = await sender.send_message(room, "acknowledged just before SIGTERM")
        release = asyncio.Event()
        in_flight = asyncio.create_task(_send_slowly(sender, room, release))
        await asyncio.sleep(0.3)  # its handler is waiting for the rest of the body
        assert not in_flight.done()
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        release.set()
        code = await asyncio.to_thread(server.proc.wait, 10)
        exit_s = time.monotonic() - signalled
        assert code == 0, server.log.read_text()
        assert exit_s < 2.0, f"exit took {exit_s:.2f}s"
        assert not pid_path.exists()

        for status, body, answered in await asyncio.gather(*polls):
            assert status == 200, body
            assert isinstance(body["next_batch"], str) and body["next_batch"]
            assert answered - signalled < 1.0  # at once, not after the 30 s timeout
        status, sent = await in_flight
        assert status == 200, sent
        kept = [acked, sent["event_id"]]
    finally:
        for c in clients:
            await c.close()
        server.stop()

    # Restarted on the same database: both acknowledged messages are there.
    server.start()
    reader = Client(server.base_url)
    reader.token = sender.token
    try:
        assert server.proc is not None and pid_path.read_text().strip() == str(server.proc.pid)
        for event_id in kept:
            status, event = await reader.request("GET", f"/rooms/{room}/event/{event_id}")
            assert status == 200, event
            assert event["content"]["body"].startswith(("acknowledged", "in flight"))
    finally:
        await reader.close()
        assert server.stop() == 0
    assert not pid_path.exists()


def test_second_process_on_the_same_pid_file_refuses_to_start(tmp_path: Path) -> None:
    cfg, port = _write_config(tmp_path, "sqlite", None)
    server = HsProcess(cfg, port, tmp_path / "hs.log")
    server.start()
    try:
        assert server.proc is not None
        second = subprocess.run([*HS, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"held by running process {server.proc.pid}" in second.stderr
        # The refused process left the running one's file alone.
        assert (tmp_path / "run" / "homeserver.pid").read_text().strip() == str(server.proc.pid)
    finally:
        assert server.stop() == 0


def test_pid_file_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    cfg, port = _write_config(tmp_path, "sqlite", None)
    server = HsProcess(cfg, port, tmp_path / "hs.log")
    server.start()
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    pid_path = tmp_path / "run" / "homeserver.pid"
    assert pid_path.read_text().strip() == str(server.proc.pid)  # no clean exit: left behind
    server.start()
    try:
        assert pid_path.read_text().strip() == str(server.proc.pid) != str(os.getpid())
    finally:
        assert server.stop() == 0
    assert not pid_path.exists()


def test_sigterm_stops_hs_run_even_when_its_parent_blocked_it(tmp_path: Path) -> None:
    """The signal mask is inherited through fork and exec (the old `hs local-cluster` blocked SIGTERM
    around its sigwait, so every instance it spawned ignored SIGTERM until SIGKILLed)."""
    cfg, port = _write_config(tmp_path, "sqlite", None)
    server = HsProcess(cfg, port, tmp_path / "hs.log")
    with open(server.log, "ab") as out:
        server.proc = subprocess.Popen(
            [*HS, "run", "-c", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT}))
    for _ in range(600):
        if (tmp_path / "run" / "homeserver.pid").exists() and b"is running" in server.log.read_bytes():
            break
        time.sleep(0.05)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        assert server.proc.wait(10) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    assert time.monotonic() - signalled < 2.0


async def test_stopping_notifier_answers_waiting_and_new_long_polls_at_once(make_server: Any, engine: str) -> None:
    """In process: a long-poll waiting when the stop begins, and one arriving during the drain (on a
    kept-alive connection), both get the normal response for `timeout=0`, not a 30 s wait."""
    srv = await make_server(engine)
    c = srv.client()
    await c.register("sleeper")
    since = (await c.sync())["next_batch"]
    since = (await c.sync(since))["next_batch"]
    waiting = asyncio.create_task(c.request("GET", "/sync", params={"since": since, "timeout": "30000"}))
    for _ in range(100):
        if await _sync_waiters(srv.base_url) >= 1:
            break
        await asyncio.sleep(0.02)
    began = time.monotonic()
    srv.hs.notifier.interrupt_long_polls()
    status, body = await waiting
    assert status == 200 and body["next_batch"], body
    status, again = await c.request("GET", "/sync", params={"since": body["next_batch"], "timeout": "30000"})
    assert status == 200 and again["next_batch"], again
    assert time.monotonic() - began < 1.0
    await c.close()
