"""What federation tests talk to: `MatrixServer`, the small interface both a real Synapse and a
federating hs offer (so one test body runs against either), and `TlsClient`, the raw Client-Server
API client of tests/harness.py speaking https and trusting only the test CA."""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from tests.harness import OPEN_CLIENTS, Client


class TlsClient(Client):
    """tests.harness.Client over https, verifying the server against the test CA alone.

    Closed by tests/conftest.py's autouse fixture at the end of each test, or earlier by `async with`.
    """

    __test__ = False

    def __init__(self, base_url: str, ca_path: Path, token: str | None = None,
                 user_id: str | None = None) -> None:
        super().__init__(base_url)
        self.ca_path = ca_path
        self.token = token
        self.user_id = user_id
        OPEN_CLIENTS.append(self)

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      params: dict[str, str] | None = None, auth: bool = True) -> tuple[int, Any]:
        if self._session is None:
            context = ssl.create_default_context(cafile=str(self.ca_path))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return await super().request(method, path, body, raw=raw, params=params, auth=auth)

    async def __aenter__(self) -> TlsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


# The client type tests get from either kind of server.
MatrixClient = TlsClient


class MatrixServer(Protocol):
    """A homeserver a federation test can drive through its Client-Server API."""

    @property
    def server_name(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    async def register_user(self, localpart: str, password: str = "password123",
                            admin: bool = False) -> tuple[str, str]:
        """Create an account; returns (user_id, access_token)."""
        ...

    def client(self, token: str | None = None) -> TlsClient: ...

    def log_tail(self, n: int = 50) -> str:
        """The server's recent log lines, for a failing test's message."""
        ...


async def user(server: MatrixServer, localpart: str) -> TlsClient:
    """A registered user's client on `server` (its `user_id` and `token` set)."""
    user_id, token = await server.register_user(localpart)
    c = server.client(token)
    c.user_id = user_id
    return c


def unique(prefix: str) -> str:
    """A localpart or alias name no other test uses: the session's Synapse is shared between tests."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
