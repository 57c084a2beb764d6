"""Throwaway homeservers outside the test's event loop: `hs run` as a subprocess, or the in-process
server on an event loop of its own in a thread.

Both serve real HTTP and can be used from synchronous tests (a test suite without asyncio, or one whose
loop is not the server's): a blocking call to the server from the test cannot starve it, as it would a
server sharing the test's loop. The thread variant starts in milliseconds; the subprocess is what a
deployment runs (`hs run` on a config file, uvloop, its own logs), started in under a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hs.localcluster import free_port
from hs.testing.server import RegisteredUser, TestHomeServer, homeserver_config, register_user

T = TypeVar("T")


def register_user_sync(base_url: str, name: str, password: str = "password123",
                       timeout: float = 30) -> RegisteredUser:
    """`register_user` for synchronous code: the registration API over urllib."""
    body = json.dumps({"username": name, "password": password, "auth": {"type": "m.login.dummy"}}).encode()
    req = urllib.request.Request(f"{base_url}/_matrix/client/v3/register", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"registering {name!r} on {base_url}: {e.code} {e.read().decode()}") from None
    return RegisteredUser(data["user_id"], data["access_token"], data["device_id"])


def _wait_ready(base_url: str, deadline: float, alive: Any) -> None:
    """Until /_matrix/client/versions answers (the listener is up and the server serves)."""
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/_matrix/client/versions", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if not alive():
            raise RuntimeError("the homeserver exited while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the homeserver did not answer on {base_url} in time")
        time.sleep(0.02)


class HsProcess:
    """`hs run` on a generated config (SQLite, open registration, test limits) in `data_dir`.

    The config is `homeserver.yaml` in `data_dir` and the output goes to `hs.log` there: both are worth
    reading when a test fails. Usable as a context manager.
    """

    def __init__(self, data_dir: Path, overrides: dict[str, Any] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir.resolve()
        self.port = free_port()
        raw = homeserver_config(self.port, {"engine": "sqlite", "path": str(self.data_dir / "hs.db")}, overrides)
        raw.setdefault("signing_key_path", str(self.data_dir / "signing.key"))
        self.config_path = self.data_dir / "homeserver.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        self.log_path = self.data_dir / "hs.log"
        self.server_name = str(raw["server_name"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        from hs.events.signing import SigningKey, write_signing_key_file

        key = self.data_dir / "signing.key"
        if not key.exists():
            write_signing_key_file(key, SigningKey.generate())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "hs.cli", "run", "--config", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        proc = self.proc
        try:
            _wait_ready(self.base_url, time.monotonic() + timeout, lambda: proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; see {self.log_path}:\n{self.log_path.read_text()[-4000:]}") from None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (a clean stop), SIGKILL after `timeout`."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same database, config and port."""
        self.stop()
        self.start()

    def register_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return register_user_sync(self.base_url, name, password)

    async def aregister_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return await register_user(self.base_url, name, password)

    def __enter__(self) -> HsProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedHomeServer:
    """A `TestHomeServer` running on its own event loop in a daemon thread.

    For a homeserver shared by many tests (session scope) whatever event loop each test runs on, and
    for synchronous tests. `run(coro)` runs a coroutine on the server's loop, for a test that wants to
    look inside `.server.hs`.
    """

    def __init__(self, data_dir: Path, overrides: dict[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.overrides = overrides
        self.server: TestHomeServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None, "not started"
        return self.server.base_url

    @property
    def server_name(self) -> str:
        assert self.server is not None, "not started"
        return self.server.server_name

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.server = TestHomeServer(self.data_dir, "sqlite", None, self.overrides)
            await self.server.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def start(self, timeout: float = 60) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="hs-test-server",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the in-process homeserver did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the in-process homeserver did not start: {self._error!r}") from self._error

    def stop(self, timeout: float = 30) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and self._error is None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        """Run `coro` on the server's loop and return its result (from any thread but the server's)."""
        assert self._loop is not None, "not started"
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def register_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return register_user_sync(self.base_url, name, password)

    async def aregister_user(self, name: str, password: str = "password123") -> RegisteredUser:
        return await register_user(self.base_url, name, password)

    def __enter__(self) -> ThreadedHomeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
