"""Operating a cluster: one instance stopped, started and restarted by name while the others keep
running (a long-poll on the stopped one is answered), and `hs local-cluster` itself: its console,
--log-dir, and a stop on SIGTERM or Ctrl-C in under 5 s with every instance stopping cleanly (no
SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hs.localcluster import LocalCluster, local_cluster_config
from tests.cluster.conftest import SECRET, instance_url
from tests.harness import Client
from tests.services import create_database, drop_database, free_port, port_open

pytestmark = pytest.mark.timeout(600)

HS = [sys.executable, "-m", "hs.cli"]


async def _user(base: str) -> Client:
    c = Client(base)
    await c.register("op" + uuid.uuid4().hex[:8])
    return c


async def _waiting_long_poll(c: Client) -> asyncio.Task[tuple[int, Any]]:
    """A /sync long-poll (timeout 30 s) that has nothing to return, so it waits."""
    since = (await c.sync())["next_batch"]
    for _ in range(10):
        poll = asyncio.create_task(c.request("GET", "/sync", params={"since": since, "timeout": "30000"}))
        await asyncio.sleep(0.5)
        if not poll.done():
            return poll
        since = (await poll)[1]["next_batch"]  # something new for a new user (presence, keys): again
    raise AssertionError("every long-poll returned at once")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- `hs local-cluster` as an operator runs it -----------------------------------------------------------

@pytest.fixture
async def cluster_file(pg_base_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Path]:
    """A cluster file for the reference cluster on a fresh database, with its signing key."""
    from hs.events.signing import SigningKey, write_signing_key_file

    dsn = await create_database(pg_base_dsn)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump(local_cluster_config(dsn, redis_url, SECRET)))
    write_signing_key_file(tmp_path / "signing.key", SigningKey.generate())
    try:
        yield cfg
    finally:
        await drop_database(dsn)


class ClusterCommand:
    """`hs local-cluster` in its own session (as in a terminal), its console on pipes."""

    def __init__(self, cfg: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*HS, "local-cluster", "-c", str(cfg), "--listen", str(self.port), "--log-dir", str(log_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} in {timeout}s; got {seen}") from None
            if line.startswith(prefix):
                return line
            seen.append(line)

    def command(self, line: str, reply: str, timeout: float = 120) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(reply, timeout)

    def status(self) -> dict[str, int | None]:
        line = self.command("status", "main ")
        pids: dict[str, int | None] = {}
        for part in line.split("; "):
            name, rest = part.split(" ", 1)
            pids[name] = int(rest.removeprefix("pid ")) if rest.startswith("pid ") else None
        return pids

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _assert_stopped_cleanly(log_dir: Path, pids: dict[str, int | None]) -> None:
    for name, pid in pids.items():
        assert pid is not None and not _alive(pid), f"{name} (pid {pid}) still runs"
        log = (log_dir / f"{name}.log").read_text()
        assert f"{name} stopped in" in log, f"{name} did not stop cleanly:\n{log[-2000:]}"


async def test_local_cluster_console_log_dir_and_sigterm(cluster_file: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "elsewhere" / "logs"
    cmd = ClusterCommand(cluster_file, log_dir)
    try:
        ready = await asyncio.to_thread(cmd.expect, "cluster of 7 instance(s)", 180)
        assert f"logs in {log_dir}" in ready
        for name in ("main", "sync1", "nginx-error"):
            assert (log_dir / f"{name}.log").exists(), name
        assert (await asyncio.to_thread(port_open, "127.0.0.1", cmd.port))

        before = await asyncio.to_thread(cmd.status)
        assert all(before.values()), before
        reply = await asyncio.to_thread(cmd.command, "restart sync2", "restarted sync2")
        assert f"(pid {before['sync2']})" not in reply
        reply = await asyncio.to_thread(cmd.command, "stop event_persister2", "stopped event_persister2 in")
        assert float(reply.split(" in ")[1].rstrip("s")) < 2.0
        assert (await asyncio.to_thread(cmd.status))["event_persister2"] is None
        await asyncio.to_thread(cmd.command, "start event_persister2", "started event_persister2")
        assert "unknown instance 'nosuch'" in await asyncio.to_thread(cmd.command, "stop nosuch", "error:")
        after = await asyncio.to_thread(cmd.status)
        unchanged = [n for n in after if n not in ("sync2", "event_persister2")]
        assert {n: after[n] for n in unchanged} == {n: before[n] for n in unchanged}

        # Requests go on being served through nginx after the restarts.
        user = await _user(f"http://127.0.0.1:{cmd.port}")
        room = await user.create_room(name="after restarts")
        await user.send_message(room, "hello")
        await user.close()

        signalled = time.monotonic()
        cmd.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(cmd.proc.wait, 30)
        took = time.monotonic() - signalled
        assert code == 0
        assert took < 5.0, f"hs local-cluster took {took:.2f}s to stop"
        last = await asyncio.to_thread(cmd.expect, "stopped (SIGTERM) in", 5)
        assert "killed" not in last, last
        _assert_stopped_cleanly(log_dir, after)
        assert not port_open("127.0.0.1", cmd.port)
    finally:
        cmd.close()


async def test_local_cluster_stops_on_ctrl_c(cluster_file: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the command and every
    instance and nginx at once."""
    log_dir = tmp_path / "logs"
    cmd = ClusterCommand(cluster_file, log_dir)
    try:
        await asyncio.to_thread(cmd.expect, "cluster of 7 instance(s)", 180)
        pids = await asyncio.to_thread(cmd.status)
        signalled = time.monotonic()
        os.killpg(cmd.proc.pid, signal.SIGINT)
        code = await asyncio.to_thread(cmd.proc.wait, 30)
        took = time.monotonic() - signalled
        assert code == 0
        assert took < 5.0, f"hs local-cluster took {took:.2f}s to stop"
        last = await asyncio.to_thread(cmd.expect, "stopped (SIGINT) in", 5)
        assert "killed" not in last, last
        _assert_stopped_cleanly(log_dir, pids)
    finally:
        cmd.close()


# -- the Python API the tests use (last: the module's shared cluster starts here) -----------------------

async def test_one_instance_stopped_started_and_restarted_while_the_others_run(cluster: LocalCluster) -> None:
    before = cluster.status()
    assert all(before.values()), before
    others = {name: pid for name, pid in before.items() if name != "sync1"}
    user = await _user(cluster.base_url)
    on_sync1 = Client(instance_url(cluster, "sync1"))
    on_sync1.token = user.token
    try:
        poll = await _waiting_long_poll(on_sync1)

        took = await asyncio.to_thread(cluster.stop_instance, "sync1")
        assert took < 2.0, f"stopping sync1 took {took:.2f}s"
        status, body = await asyncio.wait_for(poll, 1)
        assert status == 200 and body["next_batch"], body
        assert not cluster.is_running("sync1")
        assert not any(port_open("127.0.0.1", p) for p in cluster._ports("sync1"))
        assert {n: p for n, p in cluster.status().items() if n != "sync1"} == others
        # The rest of the cluster goes on serving: a room created and a message sent through nginx.
        room = await user.create_room(name="while sync1 is down")
        await user.send_message(room, "still here")

        began = time.monotonic()
        await asyncio.to_thread(cluster.start_instance, "sync1")
        started_s = time.monotonic() - began
        first_pid = cluster.status()["sync1"]
        assert first_pid not in (None, before["sync1"])
        assert (await on_sync1.sync())["next_batch"]

        took = await asyncio.to_thread(cluster.restart_instance, "sync1")
        assert cluster.status()["sync1"] not in (None, first_pid)
        assert took < started_s + 5.0, f"restart took {took:.2f}s, a start {started_s:.2f}s"
        body = await on_sync1.sync()
        assert room in body["rooms"]["join"]
        assert {n: p for n, p in cluster.status().items() if n != "sync1"} == others
        assert cluster.killed == []

        with pytest.raises(ValueError, match="unknown instance 'nosuch'"):
            cluster.stop_instance("nosuch")
        with pytest.raises(RuntimeError, match="already running"):
            cluster.start_instance("sync1")
    finally:
        await user.close()
        await on_sync1.close()
