"""Many fake remote servers in one process, for bench/bench_federation_sender.py: one aiohttp app listening
on N TLS ports (one certificate for `localhost` from the test CA, shared by all), each port one server
named `localhost:PORT` with its own ed25519 signing key.

Each server is a tests/federation/fake_remote.py FakeRemote in all but its listener (so `join()`, which
does make_join and send_join v2 against the server under test, works as in the federation tests); they
share one client session. Requests are told apart by the local port they arrived on.

What the server under test sends is recorded cheaply: a benchmark message's body is `bench <seq>`, and
a transaction's PDUs are only parsed for that number (no event ID hashing), so that 1,000 fake servers
cost the machine as little CPU as possible while the sender under test is measured. `expect()` says
which (server, seq) deliveries a phase waits for; `wait()` returns once all have arrived.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hs.events.signing import SigningKey, sign_json
from hs.util import now_ms
from tests.federation.fake_remote import FakeRemote
from tests.federation.tls import ServerCert, TestCA
from tests.services import free_port

BODY_PREFIX = "bench "


class LightRemote(FakeRemote):
    """A FakeRemote without a listener or certificate of its own (ManyRemotes serves it)."""

    def __init__(self, port: int, cert: ServerCert, session: aiohttp.ClientSession) -> None:  # noqa: D107
        # FakeRemote.__init__ would issue a certificate and pick a port: set its fields here instead.
        self.port = port
        self.server_name = f"localhost:{port}"
        self.key = SigningKey.generate()
        self.cert = cert
        self.events = {}
        self.rooms = {}
        self.transactions = []
        self.requests = []
        self.serve_missing = False
        self.serve_state = False
        self.state_before = {}
        self.extra_state_ids = []
        self._runner = None
        self._session = session
        self.received: set[int] = set()  # seq numbers of benchmark messages received
        self.pdus_received = 0  # every PDU of every transaction (repeats included)
        self.transactions_received = 0

    def _client(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def stop(self) -> None:  # the shared session and listener belong to ManyRemotes
        return None


class ManyRemotes:
    """N fake servers on N ports of one aiohttp app. `await start()`, `servers`, `expect()`, `wait()`."""

    def __init__(self, ca: TestCA, directory: Path, count: int) -> None:
        self.cert = ca.issue(directory / "many-remotes-tls")
        self.count = count
        self.servers: list[LightRemote] = []
        self._by_port: dict[int, LightRemote] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        # Deliveries a phase waits for: server index -> seqs not yet received.
        self._pending: dict[int, set[int]] = {}
        self._outstanding = 0
        self._done = asyncio.Event()
        self._index: dict[int, int] = {}  # port -> server index
        self.unknown_requests: dict[str, int] = {}

    async def start(self) -> None:
        context = ssl.create_default_context(cafile=str(self.cert.ca_path))
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=200))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/_matrix/key/v2/server", self._keys)
        r.add_get("/_matrix/key/v2/server/{keyId}", self._keys)
        r.add_put("/_matrix/federation/v1/send/{txnId}", self._on_send)
        r.add_get("/_matrix/federation/v1/version", self._on_version)
        r.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(self.cert.cert_path), str(self.cert.key_path))
        while len(self.servers) < self.count:
            port = free_port()
            if port in self._by_port:
                continue
            try:
                await web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=tls, backlog=512).start()
            except OSError:  # taken between free_port() and bind
                continue
            server = LightRemote(port, self.cert, self._session)
            self._index[port] = len(self.servers)
            self._by_port[port] = server
            self.servers.append(server)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _server(self, request: web.Request) -> LightRemote:
        assert request.transport is not None
        sockname = request.transport.get_extra_info("sockname")
        return self._by_port[int(sockname[1])]

    # -- serving ---------------------------------------------------------------------------------------
    async def _keys(self, request: web.Request) -> web.Response:
        s = self._server(request)
        body = {"server_name": s.server_name, "old_verify_keys": {},
                "verify_keys": {s.key.key_id: {"key": s.key.verify_key_base64}},
                "valid_until_ts": now_ms() + 24 * 3600 * 1000}
        return web.json_response(sign_json(body, s.server_name, s.key))

    async def _on_version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "hs-bench-many", "version": "0"}})

    async def _unknown(self, request: web.Request) -> web.Response:
        key = f"{request.method} {'/'.join(request.path.split('/')[:5])}"
        self.unknown_requests[key] = self.unknown_requests.get(key, 0) + 1
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "not implemented"}, status=404)

    async def _on_send(self, request: web.Request) -> web.Response:
        s = self._server(request)
        try:
            raw = await request.read()
        except ConnectionResetError:  # the sender was killed mid-request (the restart phase)
            return web.Response(status=400)
        body: dict[str, Any] = json.loads(raw)
        pdus = body.get("pdus") or []
        s.transactions_received += 1
        s.pdus_received += len(pdus)
        index = self._index[s.port]
        pending = self._pending.get(index)
        for pdu in pdus:
            content = pdu.get("content")
            text = content.get("body") if isinstance(content, dict) else None
            if not isinstance(text, str) or not text.startswith(BODY_PREFIX):
                continue
            seq = int(text[len(BODY_PREFIX):])
            s.received.add(seq)
            if pending is not None and seq in pending:
                pending.discard(seq)
                self._outstanding -= 1
        if self._outstanding == 0:
            self._done.set()
        # The answer names no event IDs (computing them would cost the fake a hash per PDU): both
        # servers under test accept an empty result map.
        return web.json_response({"pdus": {}})

    # -- waiting ---------------------------------------------------------------------------------------
    def expect(self, deliveries: Iterable[tuple[int, int]]) -> None:
        """Wait (in `wait()`) for these (server index, seq) deliveries, unless already received."""
        for index, seq in deliveries:
            if seq in self.servers[index].received:
                continue
            pending = self._pending.setdefault(index, set())
            if seq not in pending:
                pending.add(seq)
                self._outstanding += 1
        if self._outstanding:
            self._done.clear()
        else:
            self._done.set()

    def forget(self, deliveries: Iterable[tuple[int, int]]) -> None:
        """No longer wait for these (server index, seq) deliveries."""
        for index, seq in deliveries:
            pending = self._pending.get(index)
            if pending is not None and seq in pending:
                pending.discard(seq)
                self._outstanding -= 1
        if self._outstanding == 0:
            self._done.set()

    def missing(self) -> dict[int, set[int]]:
        """Server index -> seqs still expected."""
        return {i: set(p) for i, p in self._pending.items() if p}

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def servers_waiting(self) -> int:
        return sum(1 for p in self._pending.values() if p)

    async def wait(self, timeout: float) -> bool:
        """True once every expected delivery arrived; False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def totals(self) -> tuple[int, int]:
        """(PDUs, transactions) received by all servers so far."""
        return (sum(s.pdus_received for s in self.servers), sum(s.transactions_received for s in self.servers))
