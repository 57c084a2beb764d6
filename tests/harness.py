"""An in-process homeserver on a real TCP port, plus a small raw HTTP client for integration tests."""

from __future__ import annotations

from typing import Any

# The homeserver and the raw client live in hs.testing (the pytest plugin shipped with hs uses them
# too); re-exported here for the project's tests.
from hs.testing.server import OPEN_LIMITS, Client, TestHomeServer

__all__ = ["OPEN_CLIENTS", "OPEN_LIMITS", "Client", "TestHomeServer", "ok", "user"]


# Clients made by `user()` are closed after each test by the autouse fixture in tests/conftest.py.
OPEN_CLIENTS: list[Client] = []


async def user(server: TestHomeServer, name: str) -> Client:
    """A registered, logged-in raw client on `server`."""
    c = server.client()
    OPEN_CLIENTS.append(c)
    await c.register(name)
    return c


async def admin(server: TestHomeServer, name: str = "admin") -> Client:
    """A registered, logged-in server admin (the flag set in the database, as an operator would)."""
    client = await user(server, name)
    await server.hs.db.execute("UPDATE users SET admin = 1 WHERE user_id = $1", client.user_id)
    return client


async def ok(client: Client, method: str, path: str, body: Any = None, **params: str) -> Any:
    """A request that must succeed; returns its JSON body."""
    status, data = await client.request(method, path, body, params=params or None)
    assert status == 200, (method, path, status, data)
    return data
