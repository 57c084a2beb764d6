"""The `hs local-cluster` console: its commands, `quit`, a stop signal, and an input that ends (a
supervisor's /dev/null), which must not stop the cluster. With a stand-in for the cluster's processes."""

from __future__ import annotations

import io
import os
import signal
import threading
from typing import Any, cast

from hs.localcluster import LocalCluster, run_command, serve_console


class FakeCluster:
    instances = ["main", "sync1"]

    def __init__(self) -> None:
        self.pids: dict[str, int | None] = {"main": 100, "sync1": 101}
        self.procs: dict[str, Any] = {}
        self.calls: list[str] = []

    def status(self) -> dict[str, int | None]:
        return dict(self.pids)

    def _check(self, name: str) -> None:
        if name not in self.instances:
            raise ValueError(f"unknown instance {name!r}")

    def stop_instance(self, name: str) -> float:
        self._check(name)
        if self.pids[name] is None:
            raise RuntimeError(f"{name} is not running")
        self.calls.append(f"stop {name}")
        self.pids[name] = None
        return 0.25

    def start_instance(self, name: str) -> None:
        self._check(name)
        self.calls.append(f"start {name}")
        self.pids[name] = 200
        self.procs[name] = type("P", (), {"pid": 200})()

    def restart_instance(self, name: str) -> float:
        self._check(name)
        self.calls.append(f"restart {name}")
        self.pids[name] = 300
        self.procs[name] = type("P", (), {"pid": 300})()
        return 1.5


def _cluster() -> tuple[FakeCluster, LocalCluster]:
    fake = FakeCluster()
    return fake, cast(LocalCluster, fake)


def test_commands() -> None:
    fake, cluster = _cluster()
    assert run_command(cluster, "status") == "main pid 100; sync1 pid 101"
    assert run_command(cluster, "stop sync1") == "stopped sync1 in 0.25s"
    assert run_command(cluster, "status") == "main pid 100; sync1 stopped"
    assert run_command(cluster, "stop sync1") == "error: sync1 is not running"
    assert (run_command(cluster, "start sync1") or "").startswith("started sync1 (pid 200) in ")
    assert run_command(cluster, "RESTART sync1") == "restarted sync1 (pid 300) in 1.50s"
    assert run_command(cluster, "stop nosuch") == "error: unknown instance 'nosuch'"
    assert (run_command(cluster, "stop") or "").startswith("error: 'stop': commands: status | stop NAME")
    assert (run_command(cluster, "reboot main") or "").startswith("error: 'reboot main': commands:")
    assert run_command(cluster, "  ") == ""
    assert run_command(cluster, "quit") is None
    assert fake.calls == ["stop sync1", "start sync1", "restart sync1"]


def test_console_answers_each_line_until_quit() -> None:
    fake, cluster = _cluster()
    read, write = os.pipe()
    os.write(write, b"status\nstop sync1\nquit\nstop main\n")
    out = io.StringIO()
    try:
        assert serve_console(cluster, read, out) == "quit"
    finally:
        os.close(read)
        os.close(write)
    assert out.getvalue().splitlines() == ["main pid 100; sync1 pid 101", "stopped sync1 in 0.25s"]
    assert fake.calls == ["stop sync1"]  # nothing after quit


def test_end_of_input_keeps_the_cluster_running_until_a_signal() -> None:
    fake, cluster = _cluster()
    read, write = os.pipe()
    os.write(write, b"stop sync1\n")
    os.close(write)  # end of input right after one command
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    out = io.StringIO()
    try:
        assert serve_console(cluster, read, out) == "SIGTERM"
    finally:
        timer.cancel()
        os.close(read)
    assert out.getvalue().splitlines() == ["stopped sync1 in 0.25s"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
