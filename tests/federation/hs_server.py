"""An in-process hs that federates: tests/harness.py's TestHomeServer with `server_name`
`localhost:<port>`, one TLS listener on that port (client, federation, keys) serving a certificate
from the test CA, and outbound federation trusting that CA and allowed to reach loopback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from hs.app import create_app
from hs.runner import server_tls_context
from tests.federation.client import TlsClient
from tests.federation.synapse import shared_secret_register
from tests.federation.tls import ServerCert
from tests.harness import TestHomeServer
from tests.services import free_port

SHARED_SECRET = "shared-secret"  # tests/harness.py's registration_shared_secret
# The running FederatingHs that log to files; the `hs` logger is raised to INFO while any does.
_LOGGING_SERVERS: set[int] = set()
_SAVED_LEVEL = [logging.NOTSET]


def federation_overrides(port: int, cert: ServerCert) -> dict[str, Any]:
    """The config keys that make a TestHomeServer a federating server on `port`."""
    return {
        "server_name": f"localhost:{port}",
        "public_baseurl": f"https://localhost:{port}/",
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "tls": True,
                       "resources": ["client", "federation", "keys"]}],
        "tls_certificate_path": str(cert.cert_path),
        "tls_private_key_path": str(cert.key_path),
        "federation_custom_ca_list": [str(cert.ca_path)],
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "trusted_key_servers": [],
        "allow_public_rooms_over_federation": True,
        "registration_shared_secret": SHARED_SECRET,
    }


class FederatingHs(TestHomeServer):
    """A TestHomeServer reachable as `https://localhost:<port>` under the name `localhost:<port>`.

    `engine` is "sqlite" or "postgres" (then `dsn` names a fresh database); `overrides` are further
    config keys, applied last.
    """

    __test__ = False

    def __init__(self, data_dir: Path, engine: str, dsn: str | None, cert: ServerCert,
                 overrides: dict[str, Any] | None = None) -> None:
        port = free_port()
        super().__init__(data_dir, engine, dsn, {**federation_overrides(port, cert), **(overrides or {})})
        # TestHomeServer picked a port of its own for its plain listener; ours is the TLS one.
        self.port = port
        self.cert = cert
        self.base_url = f"https://localhost:{port}"
        self.log_path = data_dir / "hs.log"
        self._log_handler: logging.Handler | None = None

    async def start(self) -> None:
        self._attach_log()
        await self.hs.start()
        listener = self.config.listeners[0]
        app = create_app(self.hs, listener)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=server_tls_context(self.config)).start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self._detach_log()

    def _attach_log(self) -> None:
        """hs runs in the test's process, so its log is the root logger's: copy it (INFO and up) to
        a file while this server runs, for `log_tail()`. With several servers in one test each file
        holds every server's lines."""
        if self._log_handler is None:
            handler = logging.FileHandler(self.log_path, encoding="utf8")
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            hs_logger = logging.getLogger("hs")
            if not _LOGGING_SERVERS:
                _SAVED_LEVEL[0] = hs_logger.level
                if hs_logger.getEffectiveLevel() > logging.INFO:
                    hs_logger.setLevel(logging.INFO)
            _LOGGING_SERVERS.add(id(self))
            hs_logger.addHandler(handler)
            self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            hs_logger = logging.getLogger("hs")
            hs_logger.removeHandler(self._log_handler)
            _LOGGING_SERVERS.discard(id(self))
            if not _LOGGING_SERVERS:
                hs_logger.setLevel(_SAVED_LEVEL[0])
            self._log_handler.close()
            self._log_handler = None

    def log_tail(self, n: int = 50) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def client(self, token: str | None = None) -> TlsClient:
        return TlsClient(self.base_url, self.cert.ca_path, token)

    async def register_user(self, localpart: str, password: str = "password123",
                            admin: bool = False) -> tuple[str, str]:
        """Register through the shared-secret admin API (as on Synapse); returns (user_id, token)."""
        return await shared_secret_register(self.client(), SHARED_SECRET, localpart, password, admin)
