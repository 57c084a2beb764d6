"""A throwaway homeserver inside the test's own process and event loop, on a real TCP port.

The project's integration tests and the `hs.testing` pytest plugin share this class: it starts in about
20 ms on SQLite (bcrypt at 4 rounds, rate limits out of the way), serves real HTTP so any client
library can talk to it, and leaves `.hs` (the `HomeServer`) reachable for tests that need to look inside.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from hs.app import create_app
from hs.config import parse_config
from hs.events.signing import SigningKey
from hs.localcluster import free_port
from hs.server import HomeServer

# Limits high enough that tests never trip them unless they mean to.
OPEN_LIMITS = {"per_second": 1000, "burst_count": 1000}
# The shared secret of the admin registration API (`hs register-user`, /_synapse/admin/v1/register).
SHARED_SECRET = "shared-secret"
SERVER_NAME = "test.local"


def homeserver_config(port: int, database: dict[str, Any],
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw config of a test homeserver: open registration without verification, cheap password
    hashing, rate limits a test never reaches; `overrides` replace top-level keys."""
    raw: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "listeners": [{"port": port, "resources": ["client", "federation", "metrics"]}],
        "database": database,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": SHARED_SECRET,
        "bcrypt_rounds": 4,
        "rc_message": OPEN_LIMITS,
        "rc_registration": OPEN_LIMITS,
        "rc_login": {"address": OPEN_LIMITS, "account": OPEN_LIMITS, "failed_attempts": OPEN_LIMITS},
        "rc_joins": {"local": OPEN_LIMITS, "remote": OPEN_LIMITS},
    }
    raw.update(overrides or {})
    return raw


class RegisteredUser(NamedTuple):
    """What the registration API answered: unpacks as `user_id, access_token, device_id`."""

    user_id: str
    access_token: str
    device_id: str


async def register_user(base_url: str, name: str, password: str = "password123",
                        session: aiohttp.ClientSession | None = None) -> RegisteredUser:
    """Register `name` through the Client-Server registration API (the m.login.dummy stage that open
    registration offers), as a client would: the user, a token and a device, nothing made behind the
    server's back."""
    body = {"username": name, "password": password, "auth": {"type": "m.login.dummy"}}
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.post(f"{base_url}/_matrix/client/v3/register", json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"registering {name!r} on {base_url}: {resp.status} {data}")
    finally:
        if own:
            await http.close()
    return RegisteredUser(data["user_id"], data["access_token"], data["device_id"])


class TestHomeServer:
    """One homeserver (`main`, every resource on one listener) on SQLite or PostgreSQL."""

    __test__ = False

    def __init__(self, data_dir: Path, engine: str = "sqlite", dsn: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.dsn = dsn
        self.port = free_port()
        db = {"engine": "postgres", "dsn": dsn} if engine == "postgres" else {
            "engine": "sqlite", "path": str(data_dir / "hs.db")}
        self.config = parse_config(homeserver_config(self.port, db, overrides), config_dir=str(data_dir))
        self.hs = HomeServer(self.config, "main", signing_key=SigningKey.generate())
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    @property
    def server_name(self) -> str:
        return self.config.server_name

    async def start(self) -> None:
        await self.hs.start()
        app = create_app(self.hs, self.config.listeners[0])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Answer the long-polls first, as `hs run` does on SIGTERM: a client's /sync held for 30 s
        (a bot's sync loop) would otherwise hold the test's teardown until it times out."""
        if self._runner is not None:
            self.hs.notifier.interrupt_long_polls()
            await self._runner.cleanup()
            self._runner = None
            await self.hs.stop()

    async def restart(self) -> None:
        """Stop and start again on the same database and port: a process restart, memory lost."""
        await self.stop()
        self.hs = HomeServer(self.config, "main", signing_key=self.hs.signing_key)
        await self.start()

    async def aregister_user(self, name: str, password: str = "password123") -> RegisteredUser:
        """Register a user (async: a blocking call would stop this server, which runs on the caller's loop)."""
        return await register_user(self.base_url, name, password)

    def client(self) -> Client:
        return Client(self.base_url)


class Client:
    """Raw Client-Server API calls; returns (status, json) so tests can check errors exactly."""

    __test__ = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.token: str | None = None
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      params: dict[str, str] | None = None, auth: bool = True) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base_url + (path if path.startswith("/_") else "/_matrix/client/v3" + path)
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self._session.request(method, url, **kwargs) as resp:
            try:
                data = await resp.json(content_type=None)
            except Exception:
                data = await resp.text()
            return resp.status, data

    async def register(self, username: str, password: str = "password123") -> dict[str, Any]:
        body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
        status, data = await self.request("POST", "/register", body, auth=False)
        assert status == 200, data
        self.token, self.user_id, self.device_id = data["access_token"], data["user_id"], data["device_id"]
        return dict(data)

    async def create_room(self, **body: Any) -> str:
        status, data = await self.request("POST", "/createRoom", body)
        assert status == 200, data
        return str(data["room_id"])

    async def send_message(self, room_id: str, text: str, txn_id: str | None = None) -> str:
        txn = txn_id or uuid.uuid4().hex
        status, data = await self.request("PUT", f"/rooms/{room_id}/send/m.room.message/{txn}",
                                          {"msgtype": "m.text", "body": text})
        assert status == 200, data
        return str(data["event_id"])

    async def sync(self, since: str | None = None, timeout: int = 0, **params: str) -> dict[str, Any]:
        q = {"timeout": str(timeout), **params}
        if since:
            q["since"] = since
        status, data = await self.request("GET", "/sync", params=q)
        assert status == 200, data
        return data  # type: ignore[no-any-return]
